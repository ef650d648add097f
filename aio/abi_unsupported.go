//go:build linux && !(amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

// struct iocb swaps aio_key and aio_rw_flags on big-endian targets, and
// aio_context_t is 32 bits wide on 32-bit ones. Neither layout is
// implemented: fail the build loudly instead of corrupting iocbs.
var _ int = "package aio supports only little-endian 64-bit Linux"
