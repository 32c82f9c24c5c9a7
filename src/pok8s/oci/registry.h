// The registry transport (docker://): a client of the OCI distribution spec v2 HTTP API on
// libcurl, with token and basic authentication, retries, and verified streaming into the cache.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/oci/manifest.h"
#include "pok8s/oci/reference.h"

namespace pok8s::oci {

// What a client asks the registry for; bearer tokens are scoped by it.
enum class RegistryAccess { kPull, kPush };

// One repository of one registry. Safe to use from several threads at once: each thread
// performs its requests on its own curl handle, and the authentication state is shared.
//
// Plain HTTP: with options.tls_verify=false the client first asks https://HOST/v2/ without
// verifying the certificate; if that fails at the TLS or connection level (a plain HTTP
// server answers a TLS hello with garbage) it asks http://HOST/v2/ and, if that answers,
// uses HTTP for the rest of the client's life. With tls_verify=true only verified HTTPS is
// used. This is the order skopeo and podman follow for insecure registries.
class RegistryClient {
 public:
  RegistryClient(RegistryReference ref, TransportOptions options, RegistryAccess access);
  ~RegistryClient();
  RegistryClient(const RegistryClient&) = delete;
  RegistryClient& operator=(const RegistryClient&) = delete;

  const RegistryReference& reference() const;
  // "docker://registry/repository:tag", for messages.
  std::string name() const;

  // The manifest or index the reference names (its digest when it has one, else its tag).
  RawDocument get_manifest();
  // A manifest by digest; the bytes must hash to it.
  RawDocument get_manifest(const Digest& digest);
  // HEAD of a manifest by digest or tag: its descriptor (digest from Docker-Content-Digest),
  // or nothing when the registry does not have it. `tag_or_digest` is validated.
  std::optional<Descriptor> head_manifest(const std::string& tag_or_digest);
  // Uploads a manifest or index unchanged under `tag`, or under its digest when `tag` is
  // empty; returns its digest.
  Digest put_manifest(const RawDocument& document, const std::string& tag);

  bool has_blob(const Digest& digest);
  // Streams a blob into `store`, verifying size and digest; a transfer that breaks off is
  // started again from the beginning. `what` names the blob for messages and progress.
  void fetch_blob(const Descriptor& descriptor, BlobStore& store, std::string_view what,
                  const ProgressFn& progress);
  // Uploads a blob from `store` in one PUT unless the registry already has it.
  void push_blob(const Descriptor& descriptor, const BlobStore& store, std::string_view what,
                 const ProgressFn& progress);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Pushes an image index (or Docker manifest list) to `ref` (its tag, else its digest) after
// checking that the registry has every manifest it lists; returns the index's digest.
Digest push_index(const RegistryReference& ref, const RawDocument& index,
                  const TransportOptions& options);

}  // namespace pok8s::oci
