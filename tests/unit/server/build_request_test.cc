// Build requests from API clients: limits, file names and the policy that confines a spec to its
// own files.
#include "pok8s/server/build_request.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::server;

namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(BuildRequest, ParsesTheSpecAndItsFiles) {
  auto r = parse_build_request(
      R"({"spec": "a: b", "files": {"cloud-config.yaml": "#cloud-config", "m/x.yaml": "k: v"}})",
      {});
  EXPECT_EQ(r.spec, "a: b");
  EXPECT_EQ(r.files.size(), 2u);
  EXPECT_EQ(parse_build_request(build_request_json(r).dump(), {}).files, r.files);
}

TEST(BuildRequest, RefusesFileNamesThatLeaveTheRequestsDirectory) {
  for (const char* name : {"../x", "/etc/passwd", "a/../../x", "a//b", "./a", "a/.", "", "a b",
                           "a;b", "keysets/x", "a/b/c/d/e", "x\\y"}) {
    std::string body = nlohmann::json{{"spec", "s"}, {"files", {{name, "t"}}}}.dump();
    EXPECT_NE(message_of([&] { parse_build_request(body, {}); }).find("files"), std::string::npos)
        << name;
  }
}

TEST(BuildRequest, RefusesWhatIsNotARequest) {
  EXPECT_NE(message_of([] { parse_build_request("[1]", {}); }).find("JSON object"),
            std::string::npos);
  EXPECT_NE(message_of([] { parse_build_request("{", {}); }).find("not JSON"), std::string::npos);
  EXPECT_NE(message_of([] { parse_build_request(R"({"spec": 1})", {}); }).find("spec must be"),
            std::string::npos);
  EXPECT_NE(message_of([] { parse_build_request(R"({"files": {}})", {}); }).find("spec is missing"),
            std::string::npos);
  EXPECT_NE(
      message_of([] { parse_build_request(R"({"spec": "s", "x": 1})", {}); }).find("unknown key"),
      std::string::npos);
  EXPECT_NE(message_of([] {
              parse_build_request(R"({"spec": "s", "files": {"a": "1", "a/b": "2"}})", {});
            }).find("both a file and a directory"),
            std::string::npos);
  RequestLimits small;
  small.max_files = 1;
  small.max_file_bytes = 3;
  EXPECT_NE(message_of([&] {
              parse_build_request(R"({"spec": "s", "files": {"a": "1", "b": "2"}})", small);
            }).find("more than 1 files"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              parse_build_request(R"({"spec": "s", "files": {"a": "1234"}})", small);
            }).find("larger than 3 bytes"),
            std::string::npos);
}

class Materialize : public ::testing::Test {
 protected:
  util::TempDir dir_ = util::TempDir::scratch();
  static std::string spec(const std::string& extra) {
    return "apiVersion: pok8s/v1\nkind: Build\nbase: docker://registry.example/x:1\nversion: v1\n" +
           extra;
  }
};

TEST_F(Materialize, WritesTheFilesAndGivesARelativeSpecBack) {
  BuildRequest r{spec("cloudConfig: cc.yaml\ntoppings: {manifests: [m/a.yaml]}\n"),
                 {{"cc.yaml", "#cloud-config\nhostname: x\n"}, {"m/a.yaml", "kind: Namespace\n"}}};
  auto s = materialize_request(r, dir_.path(), {});
  EXPECT_EQ(util::Path(s.cloud_config), dir_.path() / "cc.yaml");
  EXPECT_EQ(util::read_file(dir_.path() / "m/a.yaml"), "kind: Namespace\n");
  std::string yaml = relative_spec_yaml(s, dir_.path());
  EXPECT_NE(yaml.find("cloudConfig: cc.yaml"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("- m/a.yaml"), std::string::npos) << yaml;
  EXPECT_EQ(yaml.find(dir_.path().string()), std::string::npos) << yaml;
}

TEST_F(Materialize, RefusesPathsOnTheServerAndLocalBases) {
  EXPECT_NE(message_of([&] {
              materialize_request({spec("cloudConfig: /etc/hostname\n"), {}}, dir_.path(), {});
            }).find("cloudConfig"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              materialize_request(
                  {"apiVersion: pok8s/v1\nkind: Build\nbase: dir:/\nversion: v1\n", {}},
                  dir_.path(), {});
            }).find("only builds from registries"),
            std::string::npos);
  RequestPolicy local;
  local.allow_local_sources = true;
  EXPECT_NO_THROW(materialize_request(
      {"apiVersion: pok8s/v1\nkind: Build\nbase: dir:/nonexistent\nversion: v1\n", {}}, dir_.path(),
      local));
}

TEST_F(Materialize, KeySetsAreForSigningOnly) {
  util::TempDir keys = util::TempDir::scratch();
  util::write_file_atomic(keys.path() / "db.key", "secret");
  RequestPolicy policy;
  policy.keysets = {{"prod", keys.path()}};
  auto s = materialize_request({spec("security: {keys: keysets/prod}\n"), {}}, dir_.path(), policy);
  EXPECT_EQ(util::Path(s.security.keys), dir_.path() / "keysets/prod");
  util::TempDir other = util::TempDir::scratch();
  EXPECT_NE(message_of([&] {
              materialize_request({spec("toppings: {manifests: [keysets/prod]}\n"), {}},
                                  other.path(), policy);
            }).find("toppings.manifests"),
            std::string::npos);
}

}  // namespace
