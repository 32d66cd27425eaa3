# VRG's N-API addon: the Linux block/file calls Node's fs does not expose (fallocate modes, SEEK_DATA/SEEK_HOLE,
# BLKGETSIZE64, BLKDISCARD), AES-128-GCM in place
# and CRC32C on three SSE4.2 streams. Built by `npm install` (package.json "install" script); src/volume/native.ts loads
# build/Release/vrg_native.node and falls back to plain JS when it is missing. Linux only: elsewhere the build
# fails, npm install reports it and goes on.
{
  "targets": [
    {
      "target_name": "vrg_native",
      "sources": ["src/vrg_native.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"]
    }
  ]
}
