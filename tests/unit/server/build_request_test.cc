// Build requests from API clients: limits, file names and the policy that confines a spec to its
// own files.
#include "pok8s/server/build_request.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

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

// The service's answer must not depend on what the server holds: a path outside the request is
// refused in the same words whether it exists or not, and is never looked at.
TEST_F(Materialize, RefusesEveryPathOutsideTheRequestInTheSameWords) {
  util::TempDir keys = util::TempDir::scratch();
  util::write_file_atomic(keys.path() / "db.key", "secret");
  RequestPolicy policy;
  policy.keysets = {{"prod", keys.path()}};
  std::map<std::string, std::string> files = {{"cc.yaml", "#cloud-config\n"},
                                              {"m/a.yaml", "kind: Namespace\n"}};
  const std::string fields[] = {"cloudConfig: {}\n", "security: {{splash: {}}}\n",
                                "toppings: {{manifests: [{}]}}\n",
                                "kubernetes: {{distribution: k3s, version: v1, binary: {}}}\n"};
  for (const auto& field : fields) {
    auto message_for = [&](const std::string& path) {
      util::TempDir scratch = util::TempDir::scratch();
      std::string m = message_of([&] {
        materialize_request({spec(fmt::format(fmt::runtime(field), path)), files}, scratch.path(),
                            policy);
      });
      EXPECT_EQ(m.find(scratch.path().string()), std::string::npos) << m;
      EXPECT_TRUE(std::filesystem::is_empty(scratch.path())) << "wrote files for a refused request";
      // The path as written stands in for itself, so that two messages compare.
      auto at = m.find(path);
      EXPECT_NE(at, std::string::npos) << m;
      return at == std::string::npos ? m : m.replace(at, path.size(), "PATH");
    };
    std::string existing = message_for("/etc/hostname");
    EXPECT_NE(existing.find("is not one of the request's files"), std::string::npos) << existing;
    for (const std::string path :
         {"/nonexistent/x.yaml", "/etc", "/etc/shadow", "../../pok8s.db", "../x.yaml",
          "m/../../pok8s.db", "missing.yaml", "/proc/self/environ"})
      EXPECT_EQ(message_for(path), existing) << field << path;
    // Key sets sign; no other field may reach into them.
    for (const std::string path : {"keysets/prod/db.key", "keysets/prod", "./keysets/prod/db.key"})
      EXPECT_NE(message_for(path).find("keysets/, which only security.keys may name"),
                std::string::npos)
          << field << path;
  }
}

TEST_F(Materialize, SplashIsOneOfTheRequestsFiles) {
  util::TempDir keys = util::TempDir::scratch();
  util::write_file_atomic(keys.path() / "db.key", "secret");
  RequestPolicy policy;
  policy.keysets = {{"prod", keys.path()}};
  for (const char* splash : {"/etc/shadow", "keysets/prod/db.key", "../../pok8s.db"}) {
    util::TempDir scratch = util::TempDir::scratch();
    std::string m = message_of([&] {
      materialize_request({spec(fmt::format("security: {{keys: keysets/prod, splash: {}}}\n"
                                            "artifacts: [uki]\n",
                                            splash)),
                           {}},
                          scratch.path(), policy);
    });
    EXPECT_NE(m.find("security.splash"), std::string::npos) << m;
    EXPECT_EQ(m.find(scratch.path().string()), std::string::npos) << m;
  }
  auto s = materialize_request(
      {spec("security: {keys: keysets/prod, splash: art/splash.bmp}\nartifacts: [uki]\n"),
       {{"art/splash.bmp", "BM"}}},
      dir_.path(), policy);
  EXPECT_EQ(util::Path(s.security.splash), dir_.path() / "art/splash.bmp");
}

TEST_F(Materialize, KeysNameAKeySetOfTheServiceAndNothingElse) {
  util::TempDir keys = util::TempDir::scratch();
  util::write_file_atomic(keys.path() / "db.key", "secret");
  RequestPolicy policy;
  policy.keysets = {{"prod", keys.path()}};
  for (const char* written : {"keysets/nope", "keysets/prod/sub", "keysets", "keys", "/etc",
                              "keysets/../keysets/../../x", keys.path().c_str()}) {
    util::TempDir scratch = util::TempDir::scratch();
    std::string m = message_of([&] {
      materialize_request(
          {spec(fmt::format("security: {{keys: \"{}\"}}\n", written)), {{"keys/db.key", "mine"}}},
          scratch.path(), policy);
    });
    EXPECT_NE(m.find("security.keys"), std::string::npos) << written << ": " << m;
    EXPECT_NE(m.find("keysets/NAME"), std::string::npos) << written << ": " << m;
  }
  for (const char* written : {"./keysets/prod", "keysets/prod/"}) {
    util::TempDir scratch = util::TempDir::scratch();
    auto s = materialize_request({spec(fmt::format("security: {{keys: {}}}\n", written)), {}},
                                 scratch.path(), policy);
    EXPECT_EQ(util::read_file(util::Path(s.security.keys) / "db.key"), "secret") << written;
  }
}

TEST_F(Materialize, ManifestsMayNameADirectoryOfTheRequestsFiles) {
  BuildRequest r{spec("toppings: {manifests: [m, ./n/../m/a.yaml]}\n"),
                 {{"m/a.yaml", "kind: Namespace\n"}, {"m/b.yaml", "kind: ConfigMap\n"}}};
  auto s = materialize_request(r, dir_.path(), {});
  EXPECT_EQ(s.toppings.manifests,
            (std::vector<util::Path>{dir_.path() / "m", dir_.path() / "m/a.yaml"}));
  // Checked on disk once written, in the request's own words.
  util::TempDir other = util::TempDir::scratch();
  std::string m = message_of([&] {
    materialize_request({spec("toppings: {manifests: [d]}\n"), {{"d/notes.txt", "x"}}},
                        other.path(), {});
  });
  EXPECT_NE(m.find("toppings.manifests[0] d holds no .yaml, .yml or .json file"), std::string::npos)
      << m;
  EXPECT_EQ(m.find(other.path().string()), std::string::npos) << m;
}

TEST_F(Materialize, TheSpecIsCheckedWithoutTouchingTheDisk) {
  // No directory at all: parse_request_spec only reads the request.
  util::Path nowhere = dir_.path() / "not-created";
  auto s = parse_request_spec({spec("cloudConfig: cc.yaml\n"), {{"cc.yaml", "#cloud-config\n"}}},
                              nowhere, {});
  EXPECT_EQ(util::Path(s.cloud_config), nowhere / "cc.yaml");
  EXPECT_FALSE(std::filesystem::exists(nowhere));
  EXPECT_NE(message_of([&] {
              parse_request_spec({spec("cloudConfig: /etc/hostname\n"), {}}, nowhere, {});
            }).find("cloudConfig \"/etc/hostname\" is not one of the request's files"),
            std::string::npos);
}

TEST_F(Materialize, ALocalBaseIsRefusedWithoutNamingTheServersDirectory) {
  std::string m = message_of([&] {
    materialize_request(
        {"apiVersion: pok8s/v1\nkind: Build\nbase: oci:image:v1\nversion: v1\n", {}}, dir_.path(),
        {});
  });
  EXPECT_NE(m.find("base \"oci:image:v1\" reads the server's disk"), std::string::npos) << m;
  EXPECT_EQ(m.find(dir_.path().string()), std::string::npos) << m;
}

TEST_F(Materialize, RefusesFileNamesOfARequestNotParsedFromJson) {
  for (const char* name : {"../escape.yaml", "/abs.yaml", "keysets/x/db.key", "a/./b"}) {
    std::string m = message_of([&] {
      materialize_request({spec(""), {{name, "x"}}}, dir_.path(), {});
    });
    EXPECT_NE(m.find("files"), std::string::npos) << name << ": " << m;
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
  EXPECT_FALSE(std::filesystem::exists(dir_.path().parent_path() / "escape.yaml"));
}

}  // namespace
