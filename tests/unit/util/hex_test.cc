// Lowercase hex both ways; anything else decodes to nothing.
#include "pok8s/util/hex.h"

#include <gtest/gtest.h>

using namespace pok8s;

TEST(Hex, RoundTripsEveryByte) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string hex = util::hex_encode(all);
  EXPECT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 6), "000102");
  EXPECT_EQ(hex.substr(506), "fdfeff");
  EXPECT_EQ(util::hex_decode(hex), all);
  EXPECT_EQ(util::hex_decode(""), std::string());
}

TEST(Hex, RefusesOddLengthsUppercaseAndOtherCharacters) {
  EXPECT_FALSE(util::hex_decode("abc"));
  EXPECT_FALSE(util::hex_decode("AB"));
  EXPECT_FALSE(util::hex_decode("0g"));
  EXPECT_FALSE(util::hex_decode("00 1"));
  EXPECT_FALSE(util::hex_decode(std::string_view("0\0", 2)));
}
