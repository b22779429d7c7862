// Linked into the harnesses that load the SentencePiece plugin (src/core/tokenizer.cpp opens it
// with RTLD_DEEPBIND so that its protobuf does not meet LibTorch's). AddressSanitizer refuses
// RTLD_DEEPBIND outright ("incompatible with sanitizer runtime"), so this dlopen, which wins over
// the sanitizer's weak interceptor, drops the flag and forwards to the interceptor. These harnesses
// do not load LibTorch, so nothing is there for the plugin's protobuf to clash with.
#include <dlfcn.h>

extern "C" void* __interceptor_dlopen(const char* filename, int flags);

extern "C" void* dlopen(const char* filename, int flags) {
#ifdef RTLD_DEEPBIND
  flags &= ~RTLD_DEEPBIND;
#endif
  return __interceptor_dlopen(filename, flags);
}
