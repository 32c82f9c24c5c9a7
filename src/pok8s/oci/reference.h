// Image names in the containers-transports convention (docker://, oci:, oci-archive:,
// docker-archive:, dir:) and registry references in Docker's normalised form.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/oci/digest.h"

namespace pok8s::oci {

// "registry/repository[:tag][@digest]", normalised the way docker and skopeo do:
// "debian" is docker.io/library/debian:latest.
struct RegistryReference {
  std::string registry;    // "docker.io", "127.0.0.1:5000"
  std::string repository;  // "library/debian"
  std::string tag;         // empty when only a digest was given
  std::optional<Digest> digest;

  // Parses and normalises; throws kInvalidInput naming the offending part.
  static RegistryReference parse(std::string_view text);
  // The tag or the digest, whichever identifies the manifest (digest wins).
  std::string reference() const;
  std::string str() const;
  // The host that serves the registry API ("registry-1.docker.io" for docker.io).
  std::string api_host() const;
};

enum class Transport { kDocker, kOci, kOciArchive, kDockerArchive, kDir };

std::string_view transport_name(Transport t);

struct ImageName {
  Transport transport = Transport::kDocker;
  RegistryReference docker;    // kDocker; for kDockerArchive the optional name to tag with
  std::filesystem::path path;  // every other transport
  std::string tag;             // kOci/kOciArchive: the ref.name annotation (may be empty)

  // Parses "transport:rest"; throws kInvalidInput with the accepted forms on failure.
  static ImageName parse(std::string_view text);
  std::string str() const;
};

// True when `tag` is a valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
bool is_valid_tag(std::string_view tag);

}  // namespace pok8s::oci
