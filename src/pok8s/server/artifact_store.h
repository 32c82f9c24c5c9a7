// Where finished builds' artifacts live, so that any server can serve any build: a directory
// (local, or shared between hosts) or an OCI registry. A build's artifacts appear all at once or
// not at all.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::server {

struct StoredArtifact {
  std::string name;  // a plain file name
  std::uint64_t size = 0;
  std::string sha256;
};

class ArtifactStore {
 public:
  virtual ~ArtifactStore() = default;
  // Moves the files `artifacts` of `dir` in as the artifacts of build `build_id`, replacing
  // any earlier ones, all at once. Sizes and digests are checked against the files.
  virtual void put(std::string_view build_id, const util::Path& dir,
                   const std::vector<StoredArtifact>& artifacts) = 0;
  // A local file holding the artifact, or nullopt when the store does not have it.
  virtual std::optional<util::Path> locate(std::string_view build_id, const StoredArtifact& a) = 0;
  // Whether the store has the artifact, without fetching it.
  virtual bool contains(std::string_view build_id, const StoredArtifact& a) {
    return locate(build_id, a).has_value();
  }
  // What the store is, for logs ("dir:/var/lib/pok8s/artifacts").
  virtual std::string describe() const = 0;
};

// "" → DIR data_dir/artifacts; "dir:PATH" or an absolute PATH → that directory;
// "docker://HOST[:PORT]/REPOSITORY" → an OCI registry: each build is an OCI artifact tagged with
// the build's id, its files the artifact's layers; downloads are cached in data_dir.
// `tls_verify` false allows a registry on plain HTTP.
std::unique_ptr<ArtifactStore> open_artifact_store(const std::string& spec,
                                                   const util::Path& data_dir,
                                                   bool tls_verify = true);

}  // namespace pok8s::server
