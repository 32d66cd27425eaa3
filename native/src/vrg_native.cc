// vrg_native: the Linux calls VRG needs that Node's fs does not expose.
//
//   punchHole(fd, offset, length)            -> Promise<void>     fallocate(PUNCH_HOLE | KEEP_SIZE)
//   zeroRange(fd, offset, length, mayPunch?)  -> Promise<'zero-range' | 'punch-hole'>
//        fallocate(ZERO_RANGE | KEEP_SIZE); when the file system says EOPNOTSUPP and mayPunch (default true),
//        punch a hole instead; when that is unsupported too, rejects with code 'EOPNOTSUPP' (== ENOTSUP on Linux)
//        so the caller writes zeros itself.
//   seekData(fd, offset) / seekHole(fd, offset) -> Promise<number>  lseek SEEK_DATA / SEEK_HOLE, -1 on ENXIO
//   blockDeviceSize(fd)                       -> Promise<number>  ioctl BLKGETSIZE64
//   discard(fd, offset, length)               -> Promise<void>     ioctl BLKDISCARD
//   isBlockDevice(fd)                         -> boolean           fstat S_ISBLK (synchronous)
//   dropCache(fd, offset, length)             -> Promise<void>     posix_fadvise(DONTNEED): starts writeback of the
//        range's dirty pages and drops its clean ones from the page cache (advisory; nothing changes on disk)
//   gcmSeal(key, iv, aad, src, dst, tag)      -> undefined         AES-128-GCM of src into dst, the tag into tag
//   gcmOpen(key, iv, aad, src, dst, tag)      -> boolean           the inverse; true iff the tag verifies
//        Synchronous, on the calling thread: a 1 MiB frame takes well under a millisecond, less than a hop to
//        the pool. dst may be src itself (in place) and is as long as src; key 16, iv 12, tag 16 bytes. OpenSSL
//        is the one Node links (its EVP symbols), so nothing is allocated or zero-filled per call, where
//        node:crypto's update() allocates a zeroed output buffer that is then copied. Left out when the build
//        has no OpenSSL headers; the JS side then uses node:crypto.
//   crc32c(data, seed)                        -> number            CRC32C (Castagnoli) of data, chained from seed
//        (crc32c(b, crc32c(a)) === crc32c(a ++ b)), the same value as @node-rs/crc32. SSE4.2's crc32 instruction
//        on three interleaved streams with the partial CRCs combined by shift tables: one stream waits on the
//        instruction's 3-cycle latency (8 GB/s here), three keep it busy every cycle (21 GB/s). Exported only on
//        x86-64 CPUs with SSE4.2; the JS side uses @node-rs/crc32 elsewhere.
//   addon                                     -> 'vrg_native', version -> 1 (the loader checks both)
//
// The promise-returning calls run on libuv's thread pool (Napi::AsyncWorker), so large ranges do not block the
// event loop. Failures reject with an Error carrying `code` (errno name, e.g. 'EOPNOTSUPP'), `errno` (negative,
// as Node's fs errors do) and `syscall`. Offsets and lengths are JS numbers: non-negative safe integers.

#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define VRG_HAVE_CRC32C 1
#endif

#if __has_include(<openssl/evp.h>)
#include <openssl/evp.h>
#define VRG_HAVE_GCM 1
#endif

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

enum class ResultKind { Void, Number, ZeroMode };

// What a thread-pool job returns: a value, or the errno and the syscall that failed.
struct Outcome {
  int64_t value = 0;
  int err = 0;
  const char* syscall = "";
};

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* name = strerrorname_np(err);
  std::string code = name != nullptr ? name : ("E" + std::to_string(err));
  Napi::Error e = Napi::Error::New(env, code + ": " + std::strerror(err) + ", " + syscall);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, ResultKind kind, std::function<Outcome()> job)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), kind_(kind), job_(std::move(job)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { outcome_ = job_(); }

  void OnOK() override {
    Napi::Env env = Env();
    if (outcome_.err != 0) {
      deferred_.Reject(ErrnoError(env, outcome_.err, outcome_.syscall).Value());
      return;
    }
    switch (kind_) {
      case ResultKind::Void:
        deferred_.Resolve(env.Undefined());
        break;
      case ResultKind::Number:
        deferred_.Resolve(Napi::Number::New(env, static_cast<double>(outcome_.value)));
        break;
      case ResultKind::ZeroMode:
        deferred_.Resolve(Napi::String::New(env, outcome_.value == 0 ? "zero-range" : "punch-hole"));
        break;
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  ResultKind kind_;
  std::function<Outcome()> job_;
  Outcome outcome_;
};

// Argument checks. On failure they throw a TypeError/RangeError in `env` and return false.
bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* fd) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(env, "fd must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= 2147483647.0 && std::floor(v) == v)) {
    Napi::RangeError::New(env, "fd must be a non-negative int32").ThrowAsJavaScriptException();
    return false;
  }
  *fd = static_cast<int>(v);
  return true;
}

bool ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t* out) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(env, std::string(what) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= kMaxSafeInteger && std::floor(v) == v)) {
    Napi::RangeError::New(env, std::string(what) + " must be a non-negative safe integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

bool ArgRange(const Napi::CallbackInfo& info, int* fd, int64_t* offset, int64_t* length) {
  if (!ArgFd(info, 0, fd) || !ArgOffset(info, 1, "offset", offset) || !ArgOffset(info, 2, "length", length)) {
    return false;
  }
  if (*offset + *length > static_cast<int64_t>(kMaxSafeInteger)) {
    Napi::RangeError::New(info.Env(), "offset + length overflows").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

Napi::Value Queue(Napi::Env env, ResultKind kind, std::function<Outcome()> job) {
  auto* worker = new OpWorker(env, kind, std::move(job));
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // the worker deletes itself after OnOK/OnError
  return promise;
}

int Fallocate(int fd, int mode, int64_t offset, int64_t length) {
  int rc;
  do {
    rc = fallocate(fd, mode, offset, length);
  } while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

bool Unsupported(int err) { return err == EOPNOTSUPP || err == ENOSYS; }

Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  int fd;
  int64_t offset, length;
  if (!ArgRange(info, &fd, &offset, &length)) return info.Env().Undefined();
  return Queue(info.Env(), ResultKind::Void, [=]() {
    Outcome o;
    if (length == 0) return o;
    o.err = Fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    o.syscall = "fallocate";
    return o;
  });
}

Napi::Value ZeroRange(const Napi::CallbackInfo& info) {
  int fd;
  int64_t offset, length;
  if (!ArgRange(info, &fd, &offset, &length)) return info.Env().Undefined();
  bool mayPunch = info.Length() <= 3 || info[3].IsUndefined() || info[3].ToBoolean().Value();
  return Queue(info.Env(), ResultKind::ZeroMode, [=]() {
    Outcome o;
    o.syscall = "fallocate";
    if (length == 0) return o;
    o.err = Fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (o.err == 0 || !Unsupported(o.err)) return o;
    if (!mayPunch) {
      o.err = EOPNOTSUPP;
      return o;
    }
    o.err = Fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (Unsupported(o.err)) o.err = EOPNOTSUPP;
    o.value = 1;
    return o;
  });
}

Napi::Value Seek(const Napi::CallbackInfo& info, int whence) {
  int fd;
  int64_t offset;
  if (!ArgFd(info, 0, &fd) || !ArgOffset(info, 1, "offset", &offset)) return info.Env().Undefined();
  return Queue(info.Env(), ResultKind::Number, [=]() {
    Outcome o;
    o.syscall = "lseek";
    off_t r = lseek(fd, offset, whence);
    if (r >= 0) {
      o.value = r;
    } else if (errno == ENXIO) {
      o.value = -1;
    } else {
      o.err = errno;
    }
    return o;
  });
}

Napi::Value SeekData(const Napi::CallbackInfo& info) { return Seek(info, SEEK_DATA); }
Napi::Value SeekHole(const Napi::CallbackInfo& info) { return Seek(info, SEEK_HOLE); }

Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  int fd;
  if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  return Queue(info.Env(), ResultKind::Number, [=]() {
    Outcome o;
    o.syscall = "ioctl(BLKGETSIZE64)";
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      o.err = errno;
    } else if (size > static_cast<uint64_t>(kMaxSafeInteger)) {
      o.err = EOVERFLOW;
    } else {
      o.value = static_cast<int64_t>(size);
    }
    return o;
  });
}

Napi::Value Discard(const Napi::CallbackInfo& info) {
  int fd;
  int64_t offset, length;
  if (!ArgRange(info, &fd, &offset, &length)) return info.Env().Undefined();
  return Queue(info.Env(), ResultKind::Void, [=]() {
    Outcome o;
    o.syscall = "ioctl(BLKDISCARD)";
    if (length == 0) return o;
    uint64_t range[2] = {static_cast<uint64_t>(offset), static_cast<uint64_t>(length)};
    if (ioctl(fd, BLKDISCARD, &range) != 0) o.err = errno;
    return o;
  });
}

Napi::Value DropCache(const Napi::CallbackInfo& info) {
  int fd;
  int64_t offset, length;
  if (!ArgRange(info, &fd, &offset, &length)) return info.Env().Undefined();
  return Queue(info.Env(), ResultKind::Void, [=]() {
    Outcome o;
    o.syscall = "posix_fadvise";
    if (length == 0) return o;
    o.err = posix_fadvise(fd, offset, length, POSIX_FADV_DONTNEED);  // returns the error number, not -1
    return o;
  });
}

Napi::Value IsBlockDevice(const Napi::CallbackInfo& info) {
  int fd;
  if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ErrnoError(info.Env(), errno, "fstat").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Boolean::New(info.Env(), S_ISBLK(st.st_mode));
}

#ifdef VRG_HAVE_GCM
// The six byte-array arguments of gcmSeal/gcmOpen, checked: key 16, iv 12, tag 16, dst as long as src.
struct GcmArgs {
  const uint8_t* key;
  const uint8_t* iv;
  const uint8_t* aad;
  size_t aadLen;
  const uint8_t* src;
  uint8_t* dst;
  size_t len;
  uint8_t* tag;
};

bool Bytes(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* len) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
  return true;
}

bool ArgGcm(const Napi::CallbackInfo& info, GcmArgs* g) {
  uint8_t *key, *iv, *aad, *src, *dst, *tag;
  size_t keyLen, ivLen, srcLen, dstLen, tagLen;
  bool ok = info.Length() == 6 && Bytes(info, 0, &key, &keyLen) && Bytes(info, 1, &iv, &ivLen) &&
            Bytes(info, 2, &aad, &g->aadLen) && Bytes(info, 3, &src, &srcLen) && Bytes(info, 4, &dst, &dstLen) &&
            Bytes(info, 5, &tag, &tagLen);
  if (!ok || keyLen != 16 || ivLen != 12 || tagLen != 16 || dstLen != srcLen || srcLen > INT32_MAX || g->aadLen > INT32_MAX) {
    Napi::TypeError::New(info.Env(), "gcm: (key[16], iv[12], aad, src, dst[src.length], tag[16]) Uint8Arrays")
        .ThrowAsJavaScriptException();
    return false;
  }
  *g = GcmArgs{key, iv, aad, g->aadLen, src, dst, srcLen, tag};
  return true;
}

// One AES-128-GCM pass; false when OpenSSL fails (or, opening, the tag does not verify).
bool Gcm(const GcmArgs& g, bool seal) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) return false;
  int n = 0;
  bool ok = EVP_CipherInit_ex(ctx, EVP_aes_128_gcm(), nullptr, nullptr, nullptr, seal ? 1 : 0) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr) == 1 &&
            EVP_CipherInit_ex(ctx, nullptr, nullptr, g.key, g.iv, seal ? 1 : 0) == 1 &&
            (g.aadLen == 0 || EVP_CipherUpdate(ctx, nullptr, &n, g.aad, static_cast<int>(g.aadLen)) == 1) &&
            (g.len == 0 || EVP_CipherUpdate(ctx, g.dst, &n, g.src, static_cast<int>(g.len)) == 1) &&
            (seal || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, g.tag) == 1) &&
            EVP_CipherFinal_ex(ctx, g.dst + g.len, &n) == 1 &&
            (!seal || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, g.tag) == 1);
  EVP_CIPHER_CTX_free(ctx);
  return ok;
}

Napi::Value GcmSeal(const Napi::CallbackInfo& info) {
  GcmArgs g;
  if (!ArgGcm(info, &g)) return info.Env().Undefined();
  if (!Gcm(g, true)) Napi::Error::New(info.Env(), "gcmSeal: OpenSSL AES-128-GCM failed").ThrowAsJavaScriptException();
  return info.Env().Undefined();
}

Napi::Value GcmOpen(const Napi::CallbackInfo& info) {
  GcmArgs g;
  if (!ArgGcm(info, &g)) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), Gcm(g, false));
}
#endif

#ifdef VRG_HAVE_CRC32C
// The CRC register as the crc32 instruction keeps it (no pre/post inversion) over n bytes, one stream.
__attribute__((target("sse4.2"))) uint32_t Crc32cOneStream(uint32_t reg, const uint8_t* p, size_t n) {
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    reg = _mm_crc32_u8(reg, *p++);
    n--;
  }
  uint64_t r64 = reg;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    r64 = _mm_crc32_u64(r64, w);
  }
  reg = static_cast<uint32_t>(r64);
  while (n-- > 0) reg = _mm_crc32_u8(reg, *p++);
  return reg;
}

// The register is linear in (register, data): reg(r, A ++ B) = shift_|B|(reg(r, A)) ^ reg(0, B), where
// shift_n(r) = reg(r, n zero bytes). shift_n is a 32x32 bit matrix, kept as four byte-indexed tables; its columns
// are computed by running the instruction over n zeros from each single-bit register (done once at load).
struct CrcShift {
  uint32_t table[4][256];
};

constexpr size_t kCrcStreamBytes = 4096;  // each of the three streams' share of a 12 KiB step
CrcShift crcShift1;  // past one stream's bytes
CrcShift crcShift2;  // past two

void MakeCrcShift(CrcShift* s, size_t zeroBytes) {
  std::string zeros(zeroBytes, '\0');
  uint32_t column[32];
  for (int bit = 0; bit < 32; bit++) {
    column[bit] = Crc32cOneStream(1u << bit, reinterpret_cast<const uint8_t*>(zeros.data()), zeroBytes);
  }
  for (int k = 0; k < 4; k++) {
    for (int b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int j = 0; j < 8; j++) {
        if ((b >> j) & 1) v ^= column[k * 8 + j];
      }
      s->table[k][b] = v;
    }
  }
}

inline uint32_t ApplyCrcShift(const CrcShift& s, uint32_t r) {
  return s.table[0][r & 0xff] ^ s.table[1][(r >> 8) & 0xff] ^ s.table[2][(r >> 16) & 0xff] ^ s.table[3][r >> 24];
}

__attribute__((target("sse4.2"))) uint32_t Crc32cRegister(uint32_t reg, const uint8_t* p, size_t n) {
  constexpr size_t L = kCrcStreamBytes;
  for (; n >= 3 * L; p += 3 * L, n -= 3 * L) {
    uint64_t a = reg, b = 0, c = 0;
    for (size_t i = 0; i < L; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, p + i, 8);
      std::memcpy(&wb, p + L + i, 8);
      std::memcpy(&wc, p + 2 * L + i, 8);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      c = _mm_crc32_u64(c, wc);
    }
    reg = ApplyCrcShift(crcShift2, static_cast<uint32_t>(a)) ^ ApplyCrcShift(crcShift1, static_cast<uint32_t>(b)) ^
          static_cast<uint32_t>(c);
  }
  return Crc32cOneStream(reg, p, n);
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "crc32c: (data: Uint8Array, seed: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array data = info[0].As<Napi::Uint8Array>();
  double seedNumber = info[1].As<Napi::Number>().DoubleValue();
  if (!(seedNumber >= 0 && seedNumber <= 4294967295.0) || std::floor(seedNumber) != seedNumber) {
    Napi::RangeError::New(env, "crc32c: seed must be a uint32").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t seed = static_cast<uint32_t>(seedNumber);
  uint32_t reg = Crc32cRegister(~seed, data.Data(), data.ByteLength());
  return Napi::Number::New(env, static_cast<double>(~reg));
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("addon", Napi::String::New(env, "vrg_native"));
  exports.Set("version", Napi::Number::New(env, 2));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
  exports.Set("zeroRange", Napi::Function::New(env, ZeroRange, "zeroRange"));
  exports.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  exports.Set("seekHole", Napi::Function::New(env, SeekHole, "seekHole"));
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSize, "blockDeviceSize"));
  exports.Set("discard", Napi::Function::New(env, Discard, "discard"));
  exports.Set("isBlockDevice", Napi::Function::New(env, IsBlockDevice, "isBlockDevice"));
  exports.Set("dropCache", Napi::Function::New(env, DropCache, "dropCache"));
#ifdef VRG_HAVE_CRC32C
  if (__builtin_cpu_supports("sse4.2")) {
    MakeCrcShift(&crcShift1, kCrcStreamBytes);
    MakeCrcShift(&crcShift2, 2 * kCrcStreamBytes);
    exports.Set("crc32c", Napi::Function::New(env, Crc32c, "crc32c"));
  }
#endif
#ifdef VRG_HAVE_GCM
  exports.Set("gcmSeal", Napi::Function::New(env, GcmSeal, "gcmSeal"));
  exports.Set("gcmOpen", Napi::Function::New(env, GcmOpen, "gcmOpen"));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(vrg_native, Init)
