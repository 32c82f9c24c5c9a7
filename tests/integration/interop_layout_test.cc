// Interoperability of the file transports with the reference tools: skopeo and umoci accept
// what pok8s writes, and pok8s reads (and verifies) what skopeo writes.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "pok8s/oci/image.h"
#include "pok8s/rootfs/import.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::oci;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct CommandResult {
  int status = -1;
  std::string output;
};

CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) r.output.append(buf, n);
  r.status = ::pclose(p);
  return r;
}

bool have(const std::string& tool) {
  return run("command -v " + tool).status == 0;
}

void write(const fs::path& p, const std::string& data, mode_t mode = 0644) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
  ::chmod(p.c_str(), mode);
}

// The tree as a map: relative path → type, mode, owner, link count and link target or the
// sha256 of the content. Directory mtimes are left out: unpackers set them as they go.
std::map<std::string, std::string> describe(const fs::path& root) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path& p = it->path();
    struct stat st {};
    ::lstat(p.c_str(), &st);
    std::string what = fmt::format("mode={:o} uid={} gid={}", st.st_mode, st.st_uid, st.st_gid);
    if (S_ISLNK(st.st_mode)) what += " -> " + fs::read_symlink(p).string();
    if (S_ISREG(st.st_mode))
      what += fmt::format(" nlink={} sha256={}", st.st_nlink, util::sha256_hex(util::read_file(p)));
    out[fs::relative(p, root).string()] = what;
  }
  return out;
}

// One image written by pok8s in every file format, shared by the tests.
struct Interop : ::testing::Test {
  static inline std::optional<util::TempDir> dir;
  static inline fs::path tree, layout, oci_archive, docker_archive;
  static inline std::optional<ResolvedImage> image;
  static inline Digest layout_digest = Digest::sha256_of("");
  static inline Digest docker_digest = Digest::sha256_of("");

  static void SetUpTestSuite() {
    dir.emplace(util::TempDir::scratch());
    tree = dir->path() / "tree";
    write(tree / "etc/os-release", "ID=pok8s\nVERSION_ID=1\n");
    write(tree / "usr/bin/tool", std::string(200000, 'x'), 0755);
    write(tree / "usr/bin/passwd", "setuid", 04755);
    fs::create_hard_link(tree / "usr/bin/tool", tree / "usr/bin/tool-alias");
    fs::create_symlink("usr/bin", tree / "bin");
    fs::create_directories(tree / "tmp");
    ::chmod((tree / "tmp").c_str(), 01777);
    ::lchown((tree / "etc/os-release").c_str(), 1000, 1000);

    BlobStore store(dir->path() / "store");
    rootfs::ImportOptions opts;
    opts.platform = Platform::parse("linux/amd64");
    opts.source_date_epoch = 1700000000;
    image = rootfs::import_rootfs("dir:" + tree.string(), store, opts);
    layout = dir->path() / "layout";
    oci_archive = dir->path() / "oci.tar";
    docker_archive = dir->path() / "docker.tar";
    layout_digest = open_destination(ImageName::parse("oci:" + layout.string() + ":v1"), {})
                        ->write(*image, store, {}, {});
    open_destination(ImageName::parse("oci-archive:" + oci_archive.string() + ":v1"), {})
        ->write(*image, store, {}, {});
    docker_digest =
        open_destination(
            ImageName::parse("docker-archive:" + docker_archive.string() + ":pok8s/test:v1"), {})
            ->write(*image, store, {}, {});
  }
  static void TearDownTestSuite() { dir.reset(); }

  void SetUp() override {
    if (!have("skopeo") || !have("umoci")) GTEST_SKIP() << "skopeo and umoci are needed";
  }

  // Reads `name` with pok8s into a fresh store, verifying every blob.
  ResolvedImage read(const std::string& name) {
    BlobStore store(dir->path() / ("read-" + util::random_hex(4)));
    auto source = open_source(ImageName::parse(name), {});
    ResolvedImage img = resolve_image(*source, store, std::nullopt);
    fetch_layers(*source, img, store, {}, {});
    for (const auto& l : img.manifest.layers) EXPECT_TRUE(store.has(l.digest)) << name;
    return img;
  }

  json inspect(const std::string& name) {
    CommandResult r = run("skopeo inspect " + name);
    EXPECT_EQ(r.status, 0) << r.output;
    return r.status == 0 ? json::parse(r.output) : json::object();
  }
};

}  // namespace

TEST_F(Interop, SkopeoInspectsAPok8sLayout) {
  json j = inspect("oci:" + layout.string() + ":v1");
  EXPECT_EQ(j["Digest"], layout_digest.str());
  EXPECT_EQ(j["Layers"][0], image->manifest.layers[0].digest.str());
  EXPECT_EQ(j["Architecture"], "amd64");
}

TEST_F(Interop, SkopeoInspectsAPok8sOciArchive) {
  json j = inspect("oci-archive:" + oci_archive.string());
  EXPECT_EQ(j["Digest"], layout_digest.str());
  EXPECT_EQ(j["Layers"][0], image->manifest.layers[0].digest.str());
}

TEST_F(Interop, SkopeoInspectsAPok8sDockerArchive) {
  json j = inspect("docker-archive:" + docker_archive.string());
  EXPECT_EQ(j["Layers"][0], image->config.diff_ids[0].str());
  EXPECT_EQ(j["Architecture"], "amd64");
  // Copying it out makes skopeo read every layer and check it against the diffIDs.
  fs::path out = dir->path() / "from-docker-archive";
  CommandResult r = run("skopeo copy -q docker-archive:" + docker_archive.string() +
                        " oci:" + out.string() + ":x");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(Interop, UmociUnpacksAPok8sLayoutToTheSameFiles) {
  fs::path bundle = dir->path() / "bundle";
  CommandResult r = run("umoci unpack --image " + layout.string() + ":v1 " + bundle.string());
  ASSERT_EQ(r.status, 0) << r.output;
  auto want = describe(tree), got = describe(bundle / "rootfs");
  EXPECT_EQ(got, want);
  EXPECT_GT(want.size(), 5u);
}

TEST_F(Interop, Pok8sReadsWhatSkopeoWrote) {
  const std::string from = "oci:" + layout.string() + ":v1";
  fs::path x = dir->path() / "x.tar", y = dir->path() / "y.tar", other = dir->path() / "other";
  for (const std::string& to :
       {"oci-archive:" + x.string() + ":v1", "docker-archive:" + y.string() + ":pok8s/y:v1",
        "oci:" + other.string() + ":v1"}) {
    CommandResult r = run("skopeo copy -q " + from + " " + to);
    ASSERT_EQ(r.status, 0) << to << ": " << r.output;
  }
  ResolvedImage a = read("oci-archive:" + x.string() + ":v1");
  EXPECT_EQ(a.manifest_digest(), layout_digest);
  ResolvedImage b = read("oci:" + other.string() + ":v1");
  EXPECT_EQ(b.manifest_digest(), layout_digest);
  ResolvedImage c = read("docker-archive:" + y.string());
  EXPECT_EQ(c.config.diff_ids, image->config.diff_ids);
  EXPECT_EQ(read("docker-archive:" + y.string() + ":pok8s/y:v1").manifest_digest(),
            c.manifest_digest());
  // pok8s reads its own docker-archive as the digest it reported when writing it.
  EXPECT_EQ(read("docker-archive:" + docker_archive.string()).manifest_digest(), docker_digest);
}
