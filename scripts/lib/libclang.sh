# Sourced by scripts/setup.sh (and by its test): is there a libclang that
# bindgen can load?
#
# bindgen loads libclang through clang-sys, which looks for exactly these
# names: libclang.so, libclang-<version>.so, libclang.so.<n> and
# libclang-<version>.so.<n>. Debian's fresh image ships libclang-cpp.so.14,
# the C++ library, which bindgen cannot use; a loose `libclang*` glob matches
# it and skips the install, and the RocksDB build then fails with "Unable to
# find libclang". So match the names clang-sys loads and nothing else.

# Prints the first loadable libclang found in the given directories (or, with
# no arguments, in $LIBCLANG_PATH, LLVM's directories and the usual library
# directories) and returns 0; returns 1 and prints nothing when there is none.
tollgate_find_libclang() {
    local dirs=("$@")
    if [ "${#dirs[@]}" -eq 0 ]; then
        [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
        dirs+=(/usr/lib/llvm-*/lib /usr/lib /usr/lib64 /usr/local/lib /usr/lib/*-linux-gnu)
    fi
    local dir file name
    for dir in "${dirs[@]}"; do
        [ -d "$dir" ] || continue
        for file in "$dir"/libclang*.so*; do
            [ -e "$file" ] || continue
            name="${file##*/}"
            case "$name" in
                libclang-cpp*) continue ;;
                libclang.so | libclang.so.* | libclang-[0-9]*.so | libclang-[0-9]*.so.*)
                    echo "$file"
                    return 0
                    ;;
            esac
        done
    done
    return 1
}
