{
  "targets": [
    {
      "target_name": "bkv_native",
      "sources": ["src/ristretto.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "libraries": ["-lsodium"]
    }
  ]
}
