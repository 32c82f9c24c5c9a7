// Images as sources and destinations of every transport, and the steps that move one:
// resolve the manifest for a platform, fetch its blobs into the cache, write it out.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/manifest.h"
#include "pok8s/oci/reference.h"

namespace pok8s::oci {

// A manifest or index exactly as stored or served: its digest is the digest of these bytes.
struct RawDocument {
  std::string bytes;
  std::string media_type;
  Digest digest() const { return Digest::sha256_of(bytes); }
};

// One image, its documents verified and its config in the blob store.
struct ResolvedImage {
  std::string source_name;           // for messages: "docker://…", "oci:dir:tag"
  std::optional<RawDocument> index;  // when the name pointed at an index
  RawDocument manifest_doc;
  Manifest manifest;
  std::string config_bytes;
  ImageConfig config;

  Digest manifest_digest() const { return manifest_doc.digest(); }
  // "layer 2/5 (sha256:0123456789ab) of docker://…", for messages about layer i.
  std::string layer_name(std::size_t i) const;
};

struct ProgressEvent {
  enum class Kind { kBlobStart, kBlobBytes, kBlobDone, kBlobCached, kNote };
  Kind kind = Kind::kNote;
  std::string what;  // "layer 1/3 sha256:…" or a note
  std::uint64_t done = 0;
  std::uint64_t total = 0;
};
using ProgressFn = std::function<void(const ProgressEvent&)>;

struct TransportOptions {
  bool tls_verify = true;
  std::optional<util::Path> auth_file;  // containers auth.json; else the usual search path
  std::string credentials;              // "user:password" given on the command line
  int jobs = 4;                         // concurrent blob transfers
  int retries = 5;                      // attempts on 5xx and connection resets
  int retry_delay_ms = 200;             // first backoff; doubled each retry
  // The destination is the administrator's choice (the artifact store's registry), not a
  // user's: the outbound policy (oci/outbound.h) refuses none of its addresses.
  bool trusted = false;
};

class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual std::string name() const = 0;
  // The document the name points at: a manifest or an index.
  virtual RawDocument top_document() = 0;
  // A manifest an index refers to, verified against the descriptor's digest.
  virtual RawDocument document(const Descriptor& descriptor) = 0;
  // Streams a blob into `store`, verifying size and digest. Safe to call from several threads
  // at once for different blobs.
  virtual void fetch_blob(const Descriptor& descriptor, BlobStore& store,
                          const ProgressFn& progress) = 0;
};

class ImageDestination {
 public:
  virtual ~ImageDestination() = default;
  virtual std::string name() const = 0;
  // Writes the image whose blobs are all in `store`; the image becomes visible only once it
  // is complete (a failure leaves what was there before). Returns the digest of the manifest
  // as written (a transport that converts media types writes a different manifest).
  virtual Digest write(const ResolvedImage& image, const BlobStore& store,
                       const TransportOptions& options, const ProgressFn& progress) = 0;
};

std::unique_ptr<ImageSource> open_source(const ImageName& name, const TransportOptions& options);
std::unique_ptr<ImageDestination> open_destination(const ImageName& name,
                                                   const TransportOptions& options);

// Per-transport constructors, each defined in its transport's file.
std::unique_ptr<ImageSource> open_registry_source(const ImageName& name,
                                                  const TransportOptions& options);
std::unique_ptr<ImageDestination> open_registry_destination(const ImageName& name,
                                                            const TransportOptions& options);
std::unique_ptr<ImageSource> open_oci_layout_source(const ImageName& name,
                                                    const TransportOptions& options);
std::unique_ptr<ImageDestination> open_oci_layout_destination(const ImageName& name,
                                                              const TransportOptions& options);
std::unique_ptr<ImageSource> open_docker_archive_source(const ImageName& name,
                                                        const TransportOptions& options);
std::unique_ptr<ImageDestination> open_docker_archive_destination(const ImageName& name,
                                                                  const TransportOptions& options);

// Reads the top document, picks the manifest for `platform` from an index (default: the
// host's), and fetches and verifies the config into `store`.
ResolvedImage resolve_image(ImageSource& source, BlobStore& store,
                            const std::optional<Platform>& platform);

// Fetches every layer not yet in `store`, `options.jobs` at a time.
void fetch_layers(ImageSource& source, const ResolvedImage& image, BlobStore& store,
                  const TransportOptions& options, const ProgressFn& progress);

struct CopyResult {
  Digest manifest_digest;
  std::size_t layers = 0;
  std::uint64_t bytes = 0;
};
CopyResult copy_image(const ImageName& from, const ImageName& to, BlobStore& store,
                      const TransportOptions& options, const std::optional<Platform>& platform,
                      const ProgressFn& progress);

}  // namespace pok8s::oci
