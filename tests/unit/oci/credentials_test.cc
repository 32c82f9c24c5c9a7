// Credentials come from the auth files skopeo, podman and docker write; challenges and token
// replies are parsed strictly, and no error message ever shows a secret.
#include "pok8s/oci/credentials.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;

namespace {

std::optional<Credentials> lookup(const std::string& json, const std::string& registry,
                                  const std::string& repository = "team/app") {
  return credentials_from_auth_json(json, registry, repository, "auth.json");
}

// "alice:s3cret:x" in base64: the password itself holds a colon.
constexpr const char* kAliceAuth = "YWxpY2U6czNjcmV0Ong=";

// Sets an environment variable for one test and restores it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST(Credentials, ParsesUserColonPasswordKeepingColonsInThePassword) {
  auto c = Credentials::parse("bob:pa:ss");
  EXPECT_EQ(c.username, "bob");
  EXPECT_EQ(c.password, "pa:ss");
  EXPECT_EQ(c.basic_authorization(), "Basic Ym9iOnBhOnNz");
  EXPECT_THROW(Credentials::parse("bob"), Error);
  EXPECT_THROW(Credentials::parse(":pw"), Error);
}

TEST(Credentials, ReadsBase64AuthByHost) {
  auto c = lookup(std::string(R"({"auths":{"127.0.0.1:5000":{"auth":")") + kAliceAuth + "\"}}}",
                  "127.0.0.1:5000");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->username, "alice");
  EXPECT_EQ(c->password, "s3cret:x");
  EXPECT_FALSE(lookup(R"({"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6cHc="}}})", "127.0.0.1:5001"));
}

TEST(Credentials, ReadsUsernameAndPasswordFields) {
  auto c = lookup(R"({"auths":{"reg.example":{"username":"u","password":"p"}}})", "reg.example");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->username, "u");
  EXPECT_EQ(c->password, "p");
}

TEST(Credentials, AcceptsSchemeAndV1SuffixKeysAndDockerHubAliases) {
  auto hub = lookup(R"({"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"}}})", "docker.io");
  ASSERT_TRUE(hub);
  EXPECT_EQ(hub->username, "u");
  auto https =
      lookup(R"({"auths":{"https://reg.example:8443":{"auth":"dTpw"}}})", "reg.example:8443");
  ASSERT_TRUE(https);
  auto v2 = lookup(R"({"auths":{"reg.example/v2/":{"auth":"dTpw"}}})", "reg.example");
  ASSERT_TRUE(v2);
}

TEST(Credentials, PrefersTheLongestMatchingRepositoryNamespace) {
  std::string json = R"({"auths":{
    "reg.example":{"username":"host","password":"1"},
    "reg.example/team":{"username":"team","password":"2"},
    "reg.example/team/app":{"username":"app","password":"3"},
    "reg.example/other":{"username":"other","password":"4"}}})";
  EXPECT_EQ(lookup(json, "reg.example", "team/app")->username, "app");
  EXPECT_EQ(lookup(json, "reg.example", "team/tool")->username, "team");
  EXPECT_EQ(lookup(json, "reg.example", "teamx/app")->username, "host");
}

TEST(Credentials, IgnoresHelperPlaceholdersAndMissingAuths) {
  EXPECT_FALSE(lookup(R"({"auths":{"reg.example":{}}})", "reg.example"));
  EXPECT_FALSE(lookup(R"({"credsStore":"desktop"})", "reg.example"));
  EXPECT_FALSE(lookup(R"({"auths":null})", "reg.example"));
}

TEST(Credentials, MalformedFilesGiveClearErrorsWithoutSecrets) {
  auto message = [](const std::string& json) {
    try {
      lookup(json, "reg.example");
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
      return std::string(e.what());
    }
    ADD_FAILURE() << "no error for " << json;
    return std::string();
  };
  // Truncated JSON after a secret: the message names the file, not the content.
  std::string truncated =
      message(R"({"auths": {"reg.example": {"auth": "c2VjcmV0OnRvcHNlY3JldA==)");
  EXPECT_NE(truncated.find("Failed to read credentials from auth.json: not valid JSON"),
            std::string::npos)
      << truncated;
  EXPECT_EQ(truncated.find("c2VjcmV0"), std::string::npos) << truncated;
  EXPECT_NE(message(R"([1,2])").find("not a JSON object"), std::string::npos);
  EXPECT_NE(message(R"({"auths":[]})").find("\"auths\" is not an object"), std::string::npos);
  EXPECT_NE(message(R"({"auths":{"reg.example":"x"}})").find("is not an object"),
            std::string::npos);
  std::string not_base64 = message(R"({"auths":{"reg.example":{"auth":"!!not base64!!"}}})");
  EXPECT_NE(not_base64.find("\"auth\" of \"reg.example\" is not base64"), std::string::npos);
  EXPECT_EQ(not_base64.find("!!not"), std::string::npos);
  // "secretpassword" with no colon.
  std::string no_colon = message(R"({"auths":{"reg.example":{"auth":"c2VjcmV0cGFzc3dvcmQ="}}})");
  EXPECT_NE(no_colon.find("does not decode to \"user:password\""), std::string::npos);
  EXPECT_EQ(no_colon.find("secretpassword"), std::string::npos);
  EXPECT_NE(message(R"({"auths":{"reg.example":{"username":7}}})").find("is not a string"),
            std::string::npos);
}

TEST(Credentials, SearchOrderStartsWithExplicitCredentialsThenTheGivenFile) {
  auto dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "given.json",
                          R"({"auths":{"reg.example":{"username":"given","password":"g"}}})");
  util::write_file_atomic(dir.path() / "env.json",
                          R"({"auths":{"reg.example":{"username":"env","password":"e"}}})");
  ScopedEnv registry_auth("REGISTRY_AUTH_FILE", (dir.path() / "env.json").string());
  ScopedEnv runtime("XDG_RUNTIME_DIR", (dir.path() / "none").string());
  ScopedEnv home("HOME", (dir.path() / "home").string());
  ScopedEnv docker("DOCKER_CONFIG", (dir.path() / "docker").string());

  TransportOptions options;
  options.credentials = "cli:c";
  options.auth_file = dir.path() / "given.json";
  EXPECT_EQ(find_credentials("reg.example", "app", options)->username, "cli");
  options.credentials.clear();
  EXPECT_EQ(find_credentials("reg.example", "app", options)->username, "given");
  options.auth_file.reset();
  EXPECT_EQ(find_credentials("reg.example", "app", options)->username, "env");
  EXPECT_FALSE(find_credentials("other.example", "app", options));

  // A given auth file must exist; the default ones may be missing.
  options.auth_file = dir.path() / "missing.json";
  EXPECT_THROW(find_credentials("reg.example", "app", options), Error);
}

TEST(Credentials, FallsBackToDockerConfig) {
  auto dir = util::TempDir::scratch();
  util::make_dirs(dir.path() / "docker");
  util::write_file_atomic(dir.path() / "docker" / "config.json",
                          R"({"auths":{"https://reg.example/v1/":{"auth":"ZG9jazpk"}}})");
  ScopedEnv registry_auth("REGISTRY_AUTH_FILE", (dir.path() / "absent.json").string());
  ScopedEnv runtime("XDG_RUNTIME_DIR", (dir.path() / "none").string());
  ScopedEnv home("HOME", (dir.path() / "home").string());
  ScopedEnv docker("DOCKER_CONFIG", (dir.path() / "docker").string());
  auto files = default_auth_files();
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files[0], dir.path() / "absent.json");
  EXPECT_EQ(files[1], dir.path() / "none" / "containers" / "auth.json");
  EXPECT_EQ(files[2], dir.path() / "home" / ".config" / "containers" / "auth.json");
  EXPECT_EQ(files[3], dir.path() / "docker" / "config.json");
  EXPECT_EQ(files[4], dir.path() / "home" / ".docker" / "config.json");
  auto c = find_credentials("reg.example", "app", TransportOptions{});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->username, "dock");
}

TEST(WwwAuthenticate, ParsesBearerWithQuotedCommasAndEscapes) {
  auto cs = parse_www_authenticate(
      R"(Bearer realm="https://auth.example/token",service="registry.example",)"
      R"(scope="repository:a/b:pull,push", error="insufficient_scope",note="say \"hi\"")");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].scheme, "bearer");
  EXPECT_EQ(cs[0].param("realm"), "https://auth.example/token");
  EXPECT_EQ(cs[0].param("service"), "registry.example");
  EXPECT_EQ(cs[0].param("scope"), "repository:a/b:pull,push");
  EXPECT_EQ(cs[0].param("error"), "insufficient_scope");
  EXPECT_EQ(cs[0].param("note"), "say \"hi\"");
}

TEST(WwwAuthenticate, ParsesBasicAndSeveralChallengesInOneHeader) {
  auto basic = parse_www_authenticate(R"(Basic realm="Registry Realm")");
  ASSERT_EQ(basic.size(), 1u);
  EXPECT_EQ(basic[0].scheme, "basic");
  EXPECT_EQ(basic[0].param("realm"), "Registry Realm");

  auto many = parse_www_authenticate(
      R"(Negotiate, BASIC realm=plain , Bearer REALM="http://127.0.0.1:1/t", service = svc)");
  ASSERT_EQ(many.size(), 3u);
  EXPECT_EQ(many[0].scheme, "negotiate");
  EXPECT_TRUE(many[0].params.empty());
  EXPECT_EQ(many[1].scheme, "basic");
  EXPECT_EQ(many[1].param("realm"), "plain");
  EXPECT_EQ(many[2].scheme, "bearer");
  EXPECT_EQ(many[2].param("realm"), "http://127.0.0.1:1/t");
  EXPECT_EQ(many[2].param("service"), "svc");

  auto token68 = parse_www_authenticate("Basic YWxhZGRpbg==, Bearer realm=\"r\"");
  ASSERT_EQ(token68.size(), 2u);
  EXPECT_EQ(token68[1].param("realm"), "r");
}

TEST(WwwAuthenticate, RefusesMalformedHeaders) {
  EXPECT_THROW(parse_www_authenticate(""), Error);
  EXPECT_THROW(parse_www_authenticate("   ,  "), Error);
  EXPECT_THROW(parse_www_authenticate(R"(Bearer realm="unterminated)"), Error);
  EXPECT_THROW(parse_www_authenticate("\"quoted\" realm=x"), Error);
  EXPECT_THROW(parse_www_authenticate(std::string(20000, 'a')), Error);
}

TEST(TokenReply, AcceptsTokenOrAccessToken) {
  auto a = parse_token_response(R"({"token":"abc.def.ghi","expires_in":300})");
  EXPECT_EQ(a.token, "abc.def.ghi");
  EXPECT_EQ(a.expires_in, 300);
  auto b = parse_token_response(R"({"access_token":"xyz"})");
  EXPECT_EQ(b.token, "xyz");
  EXPECT_EQ(b.expires_in, 60);
  EXPECT_EQ(parse_token_response(R"({"token":"","access_token":"second"})").token, "second");
}

TEST(TokenReply, RefusesRepliesWithoutAUsableToken) {
  EXPECT_THROW(parse_token_response("not json"), Error);
  EXPECT_THROW(parse_token_response("[]"), Error);
  EXPECT_THROW(parse_token_response(R"({"expires_in":3})"), Error);
  EXPECT_THROW(parse_token_response(R"({"token":7})"), Error);
  // A token with CR/LF would split the Authorization header.
  EXPECT_THROW(parse_token_response(R"({"token":"a\r\nX-Evil: 1"})"), Error);
}
