#include "keys_command.h"

#include <openssl/asn1.h>
#include <openssl/x509.h>

#include <fmt/format.h>

#include <memory>

#include "global_options.h"
#include "output.h"
#include "pok8s/boot/secure_boot_keys.h"

namespace pok8s::cli {
namespace {

struct GenerateFlags {
  std::string dir;
  std::string name = "pok8s";
  std::vector<std::string> extra_kek, extra_db;
  int validity_days = boot::kDefaultKeyValidityDays;
};

std::string subject_of(X509* cert) {
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
  return buf;
}

std::string not_after_of(X509* cert) {
  struct tm tm {};
  ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm);
  return fmt::format("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

// What `check` and `generate` report: each certificate's subject and end of validity.
nlohmann::json describe(const boot::SecureBootKeys& k, std::string& human) {
  nlohmann::json j = {{"dir", k.dir.string()}, {"certificates", nlohmann::json::object()}};
  struct Row {
    const char* name;
    X509* cert;
  };
  for (const Row& r :
       {Row{"PK", k.pk_cert.get()}, Row{"KEK", k.kek_cert.get()}, Row{"db", k.db_cert.get()}}) {
    j["certificates"][r.name] = {{"subject", subject_of(r.cert)},
                                 {"notAfter", not_after_of(r.cert)}};
    human += fmt::format("  {:<4} {} (valid until {})\n", r.name, subject_of(r.cert),
                         not_after_of(r.cert));
  }
  human += fmt::format("  PCR policy key: {}", (k.dir / std::string(boot::kPcrPublicKey)).string());
  return j;
}

int run_generate(const GlobalOptions& g, const GenerateFlags& f) {
  Output out(g.output_mode());
  boot::KeyGenOptions o;
  o.name = f.name;
  o.extra_kek.assign(f.extra_kek.begin(), f.extra_kek.end());
  o.extra_db.assign(f.extra_db.begin(), f.extra_db.end());
  o.validity_days = f.validity_days;
  out.step(fmt::format("Generating PK, KEK, db and the PCR policy key in {}", f.dir));
  boot::generate_secure_boot_keys(f.dir, o);
  boot::SecureBootKeys keys = boot::load_secure_boot_keys(f.dir);
  std::string human = fmt::format("Keys in {}:\n", f.dir);
  nlohmann::json j = describe(keys, human);
  human += fmt::format(
      "\n\nEnroll: PK.auth, KEK.auth, db.auth (signed updates; uki-iso carries them for "
      "systemd-boot), or PK.esl, KEK.esl, db.esl. Keep the *.key files and {} secret.",
      boot::kPcrPrivateKey);
  out.result(human, j);
  return 0;
}

int run_check(const GlobalOptions& g, const std::string& dir) {
  Output out(g.output_mode());
  boot::SecureBootKeys keys = boot::load_secure_boot_keys(dir);
  std::string human = fmt::format("The keys in {} are complete and valid:\n", dir);
  nlohmann::json j = describe(keys, human);
  out.result(human, j);
  return 0;
}

}  // namespace

void add_keys_commands(CLI::App& app, GlobalOptions& g, std::function<int()>& run) {
  CLI::App* keys = app.add_subcommand("keys", "Secure Boot keys and the TPM PCR policy key");
  keys->require_subcommand(1);
  {
    auto* cmd = keys->add_subcommand(
        "generate",
        "Make PK, KEK and db (certificates, private keys, EFI signature lists and signed .auth "
        "updates) and a PCR policy key pair in a new directory");
    auto f = std::make_shared<GenerateFlags>();
    cmd->add_option("DIR", f->dir, "A directory that does not exist yet (or is empty)")->required();
    cmd->add_option("--name", f->name, "Common name prefix of the certificates")
        ->default_val("pok8s");
    cmd->add_option("--append-kek", f->extra_kek,
                    "A certificate (PEM or DER) to keep in KEK too, such as a vendor's "
                    "(repeat)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--append-db", f->extra_db,
                    "A certificate (PEM or DER) to keep in db too, so that option ROMs and "
                    "other loaders it signed still run (repeat)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--validity-days", f->validity_days, "How long the certificates are valid")
        ->default_val(boot::kDefaultKeyValidityDays);
    cmd->callback([&g, &run, f] { run = [&g, f] { return run_generate(g, *f); }; });
  }
  {
    auto* cmd = keys->add_subcommand(
        "check", "Check a key directory as a build would before signing anything with it");
    auto dir = std::make_shared<std::string>();
    cmd->add_option("DIR", *dir, "The key directory")->required();
    cmd->callback([&g, &run, dir] { run = [&g, dir] { return run_check(g, *dir); }; });
  }
}

}  // namespace pok8s::cli
