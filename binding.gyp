{
  "targets": [
    {
      "target_name": "xattr",
      "sources": ["native/xattr/xattr.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"]
    },
    {
      "target_name": "fscache",
      "sources": [
        "native/fscache/fscache.cc",
        "native/fscache/message.cc",
        "native/fscache/watcher.cc",
        "native/fscache/aligned_write.cc",
        "native/fscache/fd_passing.cc",
        "native/fscache/fanotify.cc",
        "native/fscache/fanotify_reader.cc",
        "native/fscache/event_journal.cc",
        "native/fscache/mount.cc",
        "native/fscache/fds.cc",
        "native/fscache/process.cc",
        "native/fscache/chunk_verify.cc",
        "native/fscache/blake3.cc"
      ],
      "libraries": ["-lzstd", "-llz4"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O3"]
    }
  ]
}
