#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tokenizer.h>

#include "../plugins/spm_plugin_api.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#ifdef __APPLE__
#include <mach-o/dyld.h>
#define HRMCLARA_PLUGIN_SUFFIX ".dylib"
#else
#define HRMCLARA_PLUGIN_SUFFIX ".so"
#endif

namespace hrmclara {

namespace {

// The plugin's entry points, resolved once per process.
struct SpmApi {
  void* library = nullptr;
  std::string path;
  decltype(&hc_spm_abi_version) abi_version = nullptr;
  decltype(&hc_spm_load) load = nullptr;
  decltype(&hc_spm_destroy) destroy = nullptr;
  decltype(&hc_spm_free) free = nullptr;
  decltype(&hc_spm_encode) encode = nullptr;
  decltype(&hc_spm_encode_pieces) encode_pieces = nullptr;
  decltype(&hc_spm_decode) decode = nullptr;
  decltype(&hc_spm_vocab_size) vocab_size = nullptr;
  decltype(&hc_spm_piece_to_id) piece_to_id = nullptr;
  decltype(&hc_spm_id_to_piece) id_to_piece = nullptr;
  decltype(&hc_spm_special_id) special_id = nullptr;
};

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string executable_dir() {
#ifdef __APPLE__
  char buffer[PATH_MAX];
  uint32_t size = sizeof(buffer);
  if (_NSGetExecutablePath(buffer, &size) == 0) return dirname_of(buffer);
  return ".";
#else
  char buffer[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return ".";
  buffer[n] = '\0';
  return dirname_of(buffer);
#endif
}

std::string library_dir() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&executable_dir), &info) && info.dli_fname) return dirname_of(info.dli_fname);
  return ".";
}

std::vector<std::string> plugin_candidates() {
  const std::string name = "libhrmclara_spm" HRMCLARA_PLUGIN_SUFFIX;
  std::vector<std::string> out;
  if (const char* env = std::getenv("HRMCLARA_SPM_PLUGIN"); env && *env) out.emplace_back(env);
  out.push_back(library_dir() + "/" + name);
  out.push_back(executable_dir() + "/" + name);
  out.push_back(executable_dir() + "/../lib/" + name);
#ifdef HRMCLARA_SPM_PLUGIN_BUILD_PATH
  out.emplace_back(HRMCLARA_SPM_PLUGIN_BUILD_PATH);
#endif
  return out;
}

template <typename F>
void resolve(SpmApi& api, F& slot, const char* symbol) {
  slot = reinterpret_cast<F>(::dlsym(api.library, symbol));
  if (!slot) throw Error("SentencePiece plugin " + api.path + " lacks symbol " + symbol);
}

const SpmApi& spm_api() {
  static SpmApi api;
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    // RTLD_LOCAL keeps the plugin's symbols out of the global scope; RTLD_DEEPBIND (glibc) makes
    // the plugin prefer its own protobuf copy over the one LibTorch already loaded.
    int flags = RTLD_NOW | RTLD_LOCAL;
#ifdef RTLD_DEEPBIND
    flags |= RTLD_DEEPBIND;
#endif
    std::string tried;
    for (const auto& candidate : plugin_candidates()) {
      if (!file_exists(candidate)) {
        tried += (tried.empty() ? "" : ", ") + candidate;
        continue;
      }
      api.library = ::dlopen(candidate.c_str(), flags);
      if (!api.library) {
        failure = "cannot load SentencePiece plugin " + candidate + ": " + ::dlerror();
        return;
      }
      api.path = candidate;
      break;
    }
    if (!api.library) {
      failure = "SentencePiece plugin libhrmclara_spm not found (tried " + tried + "; set HRMCLARA_SPM_PLUGIN)";
      return;
    }
    try {
      resolve(api, api.abi_version, "hc_spm_abi_version");
      resolve(api, api.load, "hc_spm_load");
      resolve(api, api.destroy, "hc_spm_destroy");
      resolve(api, api.free, "hc_spm_free");
      resolve(api, api.encode, "hc_spm_encode");
      resolve(api, api.encode_pieces, "hc_spm_encode_pieces");
      resolve(api, api.decode, "hc_spm_decode");
      resolve(api, api.vocab_size, "hc_spm_vocab_size");
      resolve(api, api.piece_to_id, "hc_spm_piece_to_id");
      resolve(api, api.id_to_piece, "hc_spm_id_to_piece");
      resolve(api, api.special_id, "hc_spm_special_id");
      if (api.abi_version() != HC_SPM_ABI_VERSION)
        failure = "SentencePiece plugin " + api.path + " has ABI " + std::to_string(api.abi_version()) +
                  ", expected " + std::to_string(HC_SPM_ABI_VERSION);
    } catch (const Error& e) {
      failure = e.what();
    }
  });
  if (!failure.empty()) throw Error(failure);
  return api;
}

// Takes ownership of a plugin error string and throws it.
[[noreturn]] void throw_plugin_error(const SpmApi& api, char* error, const std::string& context) {
  std::string message = error ? error : "unknown error";
  if (error) api.free(error);
  throw FormatError(context + ": " + message);
}

}  // namespace

struct SentencePiece::Impl {
  const SpmApi* api = nullptr;
  hc_spm* handle = nullptr;
  std::string path;
};

SentencePiece::SentencePiece(const std::string& model_path) : impl_(std::make_unique<Impl>()) {
  // SentencePiece's own reader fails on a directory with "basic_filebuf::underflow" and blocks on
  // a FIFO; models are a few MB (Llama's 0.5, Gemma's 4).
  require_regular_file(model_path, kMaxConfigFileBytes);
  impl_->api = &spm_api();
  impl_->path = model_path;
  char* error = nullptr;
  impl_->handle = impl_->api->load(model_path.c_str(), &error);
  if (!impl_->handle) throw_plugin_error(*impl_->api, error, model_path + ": not a SentencePiece model");
}

SentencePiece::~SentencePiece() {
  if (impl_ && impl_->handle) impl_->api->destroy(impl_->handle);
}

std::vector<int> SentencePiece::encode(const std::string& text) const {
  int* ids = nullptr;
  size_t count = 0;
  char* error = nullptr;
  if (impl_->api->encode(impl_->handle, text.data(), text.size(), &ids, &count, &error) != 0)
    throw_plugin_error(*impl_->api, error, impl_->path + ": encode");
  std::vector<int> out(ids, ids + count);
  impl_->api->free(ids);
  return out;
}

std::vector<std::string> SentencePiece::encode_pieces(const std::string& text) const {
  char* blob = nullptr;
  size_t blob_len = 0, count = 0;
  char* error = nullptr;
  if (impl_->api->encode_pieces(impl_->handle, text.data(), text.size(), &blob, &blob_len, &count, &error) != 0)
    throw_plugin_error(*impl_->api, error, impl_->path + ": encode");
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t pos = 0; pos < blob_len;) {
    std::string piece(blob + pos);
    pos += piece.size() + 1;
    out.push_back(std::move(piece));
  }
  impl_->api->free(blob);
  return out;
}

std::string SentencePiece::decode(const std::vector<int>& ids) const {
  const int n = vocab_size();
  for (int id : ids)
    if (id < 0 || id >= n) throw UsageError(impl_->path + ": decode: id " + std::to_string(id) + " out of range [0, " + std::to_string(n) + ")");
  char* text = nullptr;
  size_t len = 0;
  char* error = nullptr;
  if (impl_->api->decode(impl_->handle, ids.data(), ids.size(), &text, &len, &error) != 0)
    throw_plugin_error(*impl_->api, error, impl_->path + ": decode");
  std::string out(text, len);
  impl_->api->free(text);
  return out;
}

int SentencePiece::vocab_size() const { return impl_->api->vocab_size(impl_->handle); }

int SentencePiece::piece_to_id(const std::string& piece) const {
  return impl_->api->piece_to_id(impl_->handle, piece.data(), piece.size());
}

std::string SentencePiece::id_to_piece(int id) const {
  const char* piece = impl_->api->id_to_piece(impl_->handle, id);
  if (!piece) throw UsageError(impl_->path + ": id " + std::to_string(id) + " out of range");
  return piece;
}

int SentencePiece::unk_id() const { return impl_->api->special_id(impl_->handle, 0); }
int SentencePiece::bos_id() const { return impl_->api->special_id(impl_->handle, 1); }
int SentencePiece::eos_id() const { return impl_->api->special_id(impl_->handle, 2); }
int SentencePiece::pad_id() const { return impl_->api->special_id(impl_->handle, 3); }

std::string SentencePiece::plugin_path() { return spm_api().path; }

}  // namespace hrmclara
