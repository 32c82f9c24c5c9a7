// The file transports: OCI layouts, oci-archives and docker-archives round-trip an image with
// every digest intact, and hostile layouts and archives are refused without side effects.
#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "pok8s/oci/image.h"
#include "pok8s/rootfs/import.h"
#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void write(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

struct TarFile {
  std::string name;
  std::string data;
  std::string symlink;  // when set, a symlink to this target
};

void make_tar(const fs::path& out, const std::vector<TarFile>& files) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_open_filename(a, out.c_str());
  for (const auto& f : files) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, f.name.c_str());
    archive_entry_set_filetype(e, f.symlink.empty() ? AE_IFREG : AE_IFLNK);
    archive_entry_set_perm(e, 0644);
    if (f.symlink.empty())
      archive_entry_set_size(e, static_cast<la_int64_t>(f.data.size()));
    else
      archive_entry_set_symlink(e, f.symlink.c_str());
    archive_write_header(a, e);
    if (f.symlink.empty()) archive_write_data(a, f.data.data(), f.data.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

// Every member of a tar file, name → data (symlinks as "-> target").
std::map<std::string, std::string> read_tar(const fs::path& file) {
  std::map<std::string, std::string> out;
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  archive_read_open_filename(a, file.c_str(), 1 << 16);
  archive_entry* e;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    std::string data;
    if (archive_entry_filetype(e) == AE_IFLNK) data = std::string("-> ") + archive_entry_symlink(e);
    char buf[4096];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0)
      data.append(buf, static_cast<size_t>(n));
    out[archive_entry_pathname(e)] = data;
  }
  archive_read_free(a);
  return out;
}

struct Transports : ::testing::Test {
  util::TempDir dir = util::TempDir::scratch();
  BlobStore store{dir.path() / "store"};

  ResolvedImage import(const std::string& content) {
    fs::path root = dir.path() / ("tree-" + content);
    write(root / "etc/motd", content);
    rootfs::ImportOptions opts;
    opts.platform = Platform::host();
    opts.source_date_epoch = 1;
    return rootfs::import_rootfs("dir:" + root.string(), store, opts);
  }

  Digest write_image(const ResolvedImage& img, const std::string& name) {
    return write_image(img, name, store);
  }
  Digest write_image(const ResolvedImage& img, const std::string& name, const BlobStore& from) {
    return open_destination(ImageName::parse(name), {})->write(img, from, {}, {});
  }

  // Reads `name` into a fresh store, fetching every blob through the source's verification.
  ResolvedImage read_image(const std::string& name, BlobStore& into) {
    auto source = open_source(ImageName::parse(name), {});
    ResolvedImage img = resolve_image(*source, into, std::nullopt);
    fetch_layers(*source, img, into, {}, {});
    return img;
  }

  ErrorKind read_error(const std::string& name, std::string* message = nullptr) {
    BlobStore other(dir.path() / ("read-" + util::random_hex(4)));
    try {
      read_image(name, other);
    } catch (const Error& e) {
      if (message) *message = e.what();
      return e.kind();
    }
    ADD_FAILURE() << name << " was read without error";
    return ErrorKind::kInternal;
  }

  fs::path blob_path(const fs::path& layout, const Digest& d) {
    return layout / "blobs" / d.algorithm() / d.hex();
  }
};

}  // namespace

TEST_F(Transports, OciLayoutRoundTripKeepsEveryDigest) {
  ResolvedImage img = import("hello");
  fs::path layout = dir.path() / "layout";
  Digest written = write_image(img, "oci:" + layout.string() + ":v1");
  EXPECT_EQ(written, img.manifest_digest());  // already OCI: bytes kept
  EXPECT_EQ(json::parse(util::read_file(layout / "oci-layout"))["imageLayoutVersion"], "1.0.0");

  BlobStore back(dir.path() / "back");
  ResolvedImage read = read_image("oci:" + layout.string() + ":v1", back);
  EXPECT_EQ(read.manifest_digest(), written);
  EXPECT_EQ(read.config_bytes, img.config_bytes);
  ASSERT_EQ(read.manifest.layers.size(), 1u);
  EXPECT_EQ(read.manifest.layers[0].digest, img.manifest.layers[0].digest);
  EXPECT_TRUE(back.has(img.manifest.layers[0].digest));
  // No tag: the only image is taken.
  EXPECT_EQ(read_image("oci:" + layout.string(), back).manifest_digest(), written);
}

TEST_F(Transports, OciLayoutHoldsSeveralTagsAndNamesThemWhenOneIsMissing) {
  ResolvedImage a = import("a"), b = import("b"), c = import("c");
  fs::path layout = dir.path() / "layout";
  write_image(a, "oci:" + layout.string() + ":a");
  write_image(b, "oci:" + layout.string() + ":b");
  BlobStore back(dir.path() / "back");
  EXPECT_EQ(read_image("oci:" + layout.string() + ":a", back).manifest_digest(),
            a.manifest_digest());
  EXPECT_EQ(read_image("oci:" + layout.string() + ":b", back).manifest_digest(),
            b.manifest_digest());

  // Rewriting a tag replaces its entry.
  write_image(c, "oci:" + layout.string() + ":a");
  EXPECT_EQ(read_image("oci:" + layout.string() + ":a", back).manifest_digest(),
            c.manifest_digest());
  EXPECT_EQ(json::parse(util::read_file(layout / "index.json"))["manifests"].size(), 2u);

  std::string msg;
  EXPECT_EQ(read_error("oci:" + layout.string() + ":nope", &msg), ErrorKind::kNotFound);
  EXPECT_NE(msg.find("a, b"), std::string::npos) << msg;
  EXPECT_EQ(read_error("oci:" + layout.string(), &msg), ErrorKind::kInvalidInput);
  EXPECT_NE(msg.find("a, b"), std::string::npos) << msg;
}

TEST_F(Transports, ConvertsDockerMediaTypesWhenWritingALayout) {
  ResolvedImage img = import("docker");
  // Present the image as a Docker one, as a registry or docker-archive would.
  Manifest docker = img.manifest;
  docker.media_type = std::string(media_type::kDockerManifest);
  docker.config.media_type = std::string(media_type::kDockerConfig);
  docker.layers[0].media_type = std::string(media_type::kDockerLayerGzip);
  img.manifest = docker;
  img.manifest_doc = {docker.to_json(), docker.media_type};
  fs::path layout = dir.path() / "layout";
  Digest written = write_image(img, "oci:" + layout.string() + ":x");
  EXPECT_NE(written, img.manifest_digest());
  Manifest m = Manifest::parse(util::read_file(blob_path(layout, written)));
  EXPECT_EQ(m.media_type, media_type::kOciManifest);
  EXPECT_EQ(m.config.media_type, media_type::kOciConfig);
  EXPECT_EQ(m.layers[0].media_type, media_type::kOciLayerGzip);
  EXPECT_EQ(m.layers[0].digest, docker.layers[0].digest);
}

TEST_F(Transports, RefusesAnIndexJsonThatIsNotJson) {
  ResolvedImage img = import("x");
  fs::path layout = dir.path() / "layout";
  write_image(img, "oci:" + layout.string() + ":x");
  write(layout / "index.json", "{not json");
  std::string msg;
  EXPECT_EQ(read_error("oci:" + layout.string() + ":x", &msg), ErrorKind::kFormat);
  EXPECT_NE(msg.find("index.json"), std::string::npos) << msg;
}

TEST_F(Transports, RefusesABlobWhoseContentDoesNotMatchItsDigest) {
  ResolvedImage img = import("x");
  fs::path layout = dir.path() / "layout";
  write_image(img, "oci:" + layout.string() + ":x");
  fs::path layer = blob_path(layout, img.manifest.layers[0].digest);
  std::string bytes = util::read_file(layer);
  bytes[bytes.size() / 2] ^= 1;
  fs::remove(layer);
  write(layer, bytes);
  BlobStore other(dir.path() / "other");
  std::string msg;
  EXPECT_EQ(read_error("oci:" + layout.string() + ":x", &msg), ErrorKind::kSignature);
  EXPECT_NE(msg.find(img.manifest.layers[0].digest.str()), std::string::npos) << msg;
}

TEST_F(Transports, RefusesADigestWithPathTraversalInIndexJson) {
  ResolvedImage img = import("x");
  fs::path layout = dir.path() / "layout";
  write_image(img, "oci:" + layout.string() + ":x");
  json index = json::parse(util::read_file(layout / "index.json"));
  index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd";
  write(layout / "index.json", index.dump());
  std::string msg;
  EXPECT_EQ(read_error("oci:" + layout.string() + ":x", &msg), ErrorKind::kInvalidInput);
  EXPECT_NE(msg.find("index.json"), std::string::npos) << msg;
}

TEST_F(Transports, RefusesASymlinkedBlobPointingOutside) {
  ResolvedImage img = import("x");
  fs::path layout = dir.path() / "layout";
  write_image(img, "oci:" + layout.string() + ":x");
  fs::path outside = dir.path() / "outside";
  fs::copy_file(blob_path(layout, img.manifest.layers[0].digest), outside);
  fs::remove(blob_path(layout, img.manifest.layers[0].digest));
  fs::create_symlink(outside, blob_path(layout, img.manifest.layers[0].digest));
  std::string msg;
  EXPECT_EQ(read_error("oci:" + layout.string() + ":x", &msg), ErrorKind::kInvalidInput);
  EXPECT_NE(msg.find("symlink"), std::string::npos) << msg;
}

TEST_F(Transports, AMissingBlobFailsClearlyAndLeavesNoDestination) {
  ResolvedImage img = import("x");
  fs::path layout = dir.path() / "layout";
  write_image(img, "oci:" + layout.string() + ":x");
  fs::remove(blob_path(layout, img.manifest.layers[0].digest));
  BlobStore other(dir.path() / "other");
  fs::path dest = dir.path() / "dest";
  try {
    copy_image(ImageName::parse("oci:" + layout.string() + ":x"),
               ImageName::parse("oci:" + dest.string() + ":x"), other, {}, std::nullopt, {});
    FAIL() << "copied an image with a missing blob";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dest));

  // The destination itself refuses an image whose blobs are not all cached, before writing.
  fs::remove(store.path_for(img.manifest.layers[0].digest));
  EXPECT_THROW(write_image(img, "oci:" + dest.string() + ":x"), Error);
  EXPECT_THROW(write_image(img, "oci-archive:" + dest.string() + ".tar"), Error);
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_FALSE(fs::exists(dest.string() + ".tar"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".dest")) << e.path();
}

TEST_F(Transports, RefusesToWriteIntoADirectoryThatIsNotALayout) {
  ResolvedImage img = import("x");
  write(dir.path() / "notlayout/file", "mine");
  try {
    write_image(img, "oci:" + (dir.path() / "notlayout").string() + ":x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
  EXPECT_EQ(util::read_file(dir.path() / "notlayout/file"), "mine");
}

TEST_F(Transports, OciArchiveRoundTripIsDeterministic) {
  ResolvedImage img = import("archive");
  fs::path tar = dir.path() / "image.tar";
  Digest written = write_image(img, "oci-archive:" + tar.string() + ":v1");
  std::string first = util::read_file(tar);
  write_image(img, "oci-archive:" + tar.string() + ":v1");
  EXPECT_EQ(util::read_file(tar), first);
  auto members = read_tar(tar);
  EXPECT_TRUE(members.count("oci-layout"));
  EXPECT_TRUE(members.count("index.json"));

  BlobStore back(dir.path() / "back");
  ResolvedImage read = read_image("oci-archive:" + tar.string() + ":v1", back);
  EXPECT_EQ(read.manifest_digest(), written);
  EXPECT_TRUE(back.has(img.manifest.layers[0].digest));
  EXPECT_EQ(read_image("oci-archive:" + tar.string(), back).manifest_digest(), written);
}

TEST_F(Transports, RefusesHostileOciArchiveEntries) {
  ResolvedImage img = import("x");
  fs::path tar = dir.path() / "good.tar";
  write_image(img, "oci-archive:" + tar.string());
  auto good = read_tar(tar);
  auto with = [&](const std::string& file, TarFile extra) {
    std::vector<TarFile> files;
    for (const auto& [name, data] : good)
      if (!name.ends_with('/') && name != extra.name) files.push_back({name, data, {}});
    files.push_back(std::move(extra));
    make_tar(dir.path() / file, files);
    return "oci-archive:" + (dir.path() / file).string();
  };
  std::string msg;
  EXPECT_EQ(read_error(with("dotdot.tar", {"blobs/../../escape", "x", {}}), &msg),
            ErrorKind::kInvalidInput);
  EXPECT_NE(msg.find("escape"), std::string::npos) << msg;
  std::string layer = "blobs/sha256/" + img.manifest.layers[0].digest.hex();
  EXPECT_EQ(read_error(with("symlink.tar", {layer, {}, "/etc/passwd"}), &msg),
            ErrorKind::kInvalidInput);
  EXPECT_NE(msg.find("symlink"), std::string::npos) << msg;
  EXPECT_EQ(read_error(with("extra.tar", {"etc/cron.d/x", "x", {}}), &msg),
            ErrorKind::kInvalidInput);
  EXPECT_EQ(read_error(with("baddigest.tar", {"blobs/sha256/abc", "x", {}}), &msg),
            ErrorKind::kInvalidInput);
}

TEST_F(Transports, DockerArchiveRoundTripKeepsConfigAndDiffIds) {
  ResolvedImage img = import("docker");
  fs::path tar = dir.path() / "docker.tar";
  Digest written = write_image(img, "docker-archive:" + tar.string() + ":example.com/app:v2");
  auto members = read_tar(tar);
  const Digest& diff_id = img.config.diff_ids[0];
  ASSERT_TRUE(members.count(diff_id.hex() + "/layer.tar"));
  ASSERT_TRUE(members.count(img.manifest.config.digest.hex() + ".json"));
  json manifest = json::parse(members["manifest.json"]);
  EXPECT_EQ(manifest[0]["RepoTags"][0], "example.com/app:v2");
  EXPECT_EQ(manifest[0]["Layers"][0], diff_id.hex() + "/layer.tar");
  EXPECT_EQ(json::parse(members["repositories"])["example.com/app"]["v2"], diff_id.hex());

  BlobStore back(dir.path() / "back");
  ResolvedImage read = read_image("docker-archive:" + tar.string(), back);
  EXPECT_EQ(read.manifest_digest(), written);
  EXPECT_EQ(read.manifest.media_type, media_type::kDockerManifest);
  EXPECT_EQ(read.config_bytes, img.config_bytes);
  ASSERT_EQ(read.manifest.layers.size(), 1u);
  EXPECT_EQ(read.manifest.layers[0].media_type, media_type::kDockerLayerTar);
  EXPECT_EQ(read.manifest.layers[0].digest, diff_id);
  EXPECT_TRUE(back.has(diff_id));
  EXPECT_EQ(
      read_image("docker-archive:" + tar.string() + ":example.com/app:v2", back).manifest_digest(),
      written);
  std::string msg;
  EXPECT_EQ(read_error("docker-archive:" + tar.string() + ":example.com/app:v3", &msg),
            ErrorKind::kNotFound);
  EXPECT_NE(msg.find("example.com/app:v2"), std::string::npos) << msg;

  // And on to an OCI layout, where umoci can read it.
  fs::path layout = dir.path() / "layout";
  Digest oci = write_image(read, "oci:" + layout.string() + ":v2", back);
  EXPECT_EQ(Manifest::parse(util::read_file(blob_path(layout, oci))).layers[0].media_type,
            media_type::kOciLayer);
}

TEST_F(Transports, ReadsDockerSaveArchivesWithSymlinkedAndGzipLayers) {
  ResolvedImage img = import("save");
  fs::path saved = dir.path() / "saved.tar";
  write_image(img, "docker-archive:" + saved.string() + ":app:1");
  auto members = read_tar(saved);
  const std::string& diff = img.config.diff_ids[0].hex();
  std::string config_name = img.manifest.config.digest.hex() + ".json";
  // What `docker save` does for a layer shared by two v1 ids: the second is a symlink.
  json manifest = json::array(
      {{{"Config", config_name}, {"RepoTags", {"app:1"}}, {"Layers", {"aaaa/layer.tar"}}}});
  make_tar(dir.path() / "symlinked.tar", {{config_name, members[config_name], {}},
                                          {"bbbb/layer.tar", members[diff + "/layer.tar"], {}},
                                          {"aaaa/layer.tar", {}, "../bbbb/layer.tar"},
                                          {"manifest.json", manifest.dump(), {}}});
  BlobStore back(dir.path() / "back");
  ResolvedImage read =
      read_image("docker-archive:" + (dir.path() / "symlinked.tar").string(), back);
  EXPECT_EQ(read.manifest.layers[0].digest, img.config.diff_ids[0]);

  // A gzip layer keeps its compressed digest and a gzip media type.
  manifest[0]["Layers"][0] = "gz.tar";
  make_tar(dir.path() / "gz.tar.outer",
           {{config_name, members[config_name], {}},
            {"gz.tar", util::read_file(store.path_for(img.manifest.layers[0].digest)), {}},
            {"manifest.json", manifest.dump(), {}}});
  read = read_image("docker-archive:" + (dir.path() / "gz.tar.outer").string(), back);
  EXPECT_EQ(read.manifest.layers[0].media_type, media_type::kDockerLayerGzip);
  EXPECT_EQ(read.manifest.layers[0].digest, img.manifest.layers[0].digest);

  // A symlink that climbs out of the archive names nothing.
  manifest[0]["Layers"][0] = "aaaa/layer.tar";
  make_tar(dir.path() / "escape.tar", {{config_name, members[config_name], {}},
                                       {"aaaa/layer.tar", {}, "../../etc/passwd"},
                                       {"manifest.json", manifest.dump(), {}}});
  EXPECT_EQ(read_error("docker-archive:" + (dir.path() / "escape.tar").string()),
            ErrorKind::kInvalidInput);
}

TEST_F(Transports, RefusesADockerArchiveLayerThatDoesNotMatchItsDiffId) {
  ResolvedImage img = import("tamper");
  fs::path saved = dir.path() / "saved.tar";
  write_image(img, "docker-archive:" + saved.string());
  auto members = read_tar(saved);
  std::vector<TarFile> files;
  for (auto& [name, data] : members) {
    if (name.ends_with('/')) continue;
    if (name.ends_with("layer.tar")) data[600] ^= 1;
    files.push_back({name, data, {}});
  }
  make_tar(dir.path() / "tampered.tar", files);
  EXPECT_EQ(read_error("docker-archive:" + (dir.path() / "tampered.tar").string()),
            ErrorKind::kSignature);
}
