// The check every refusal test makes: `f` throws a pok8s::Error of `kind` whose message names
// `needle` on one line.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "pok8s/util/error.h"

namespace pok8s::testing {

template <typename F>
void expect_error(F&& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

}  // namespace pok8s::testing
