//go:build cgo

// Package cabi exposes the C layout of kmod/include/uapi/linux/abuse.h so
// that the abuse package's tests can compare their Go mirror against it.
// It is only built with cgo and only imported by tests.
package cabi

/*
#include <stddef.h>
// abuse_uapi.h is a symlink to kmod/include/uapi/linux/abuse.h, kept in
// this directory so that the go build cache notices header changes.
#include "abuse_uapi.h"

static unsigned long abuse_ioc_ctl_add(void) { return ABUSE_CTL_ADD; }
static unsigned long abuse_ioc_ctl_attach(void) { return ABUSE_CTL_ATTACH; }
static unsigned long abuse_ioc_ctl_remove(void) { return ABUSE_CTL_REMOVE; }
static unsigned long abuse_ioc_ctl_queue_fd(void) { return ABUSE_CTL_QUEUE_FD; }
static unsigned long abuse_ioc_queue_commit_fetch(void) { return ABUSE_QUEUE_COMMIT_FETCH; }
static unsigned long abuse_ioc_queue_copy(void) { return ABUSE_QUEUE_COPY; }
*/
import "C"

import "unsafe"

// Field is one struct member: name, offset and size in C.
type Field struct {
	Name         string
	Offset, Size uintptr
}

// Struct is the C layout of one struct.
type Struct struct {
	Size   uintptr
	Fields []Field
}

func f(name string, off, size uintptr) Field { return Field{name, off, size} }

// Structs returns the C layouts, keyed by struct name without "abuse_".
func Structs() map[string]Struct {
	var dc C.struct_abuse_dev_config
	var dr C.struct_abuse_dev_remove
	var qs C.struct_abuse_queue_setup
	var rq C.struct_abuse_request
	var cp C.struct_abuse_completion
	var bt C.struct_abuse_batch
	var cy C.struct_abuse_copy
	return map[string]Struct{
		"dev_config": {unsafe.Sizeof(dc), []Field{
			f("version", unsafe.Offsetof(dc.version), unsafe.Sizeof(dc.version)),
			f("flags", unsafe.Offsetof(dc.flags), unsafe.Sizeof(dc.flags)),
			f("size", unsafe.Offsetof(dc.size), unsafe.Sizeof(dc.size)),
			f("logical_block_size", unsafe.Offsetof(dc.logical_block_size), unsafe.Sizeof(dc.logical_block_size)),
			f("nr_hw_queues", unsafe.Offsetof(dc.nr_hw_queues), unsafe.Sizeof(dc.nr_hw_queues)),
			f("queue_depth", unsafe.Offsetof(dc.queue_depth), unsafe.Sizeof(dc.queue_depth)),
			f("max_io_bytes", unsafe.Offsetof(dc.max_io_bytes), unsafe.Sizeof(dc.max_io_bytes)),
			f("max_discard_sectors", unsafe.Offsetof(dc.max_discard_sectors), unsafe.Sizeof(dc.max_discard_sectors)),
			f("max_write_zeroes_sectors", unsafe.Offsetof(dc.max_write_zeroes_sectors), unsafe.Sizeof(dc.max_write_zeroes_sectors)),
			f("reconnect_ms", unsafe.Offsetof(dc.reconnect_ms), unsafe.Sizeof(dc.reconnect_ms)),
			f("dev_id", unsafe.Offsetof(dc.dev_id), unsafe.Sizeof(dc.dev_id)),
			f("io_timeout_ms", unsafe.Offsetof(dc.io_timeout_ms), unsafe.Sizeof(dc.io_timeout_ms)),
			f("features", unsafe.Offsetof(dc.features), unsafe.Sizeof(dc.features)),
			f("token", unsafe.Offsetof(dc.token), unsafe.Sizeof(dc.token)),
			f("reserved", unsafe.Offsetof(dc.reserved), unsafe.Sizeof(dc.reserved)),
		}},
		"dev_remove": {unsafe.Sizeof(dr), []Field{
			f("dev_id", unsafe.Offsetof(dr.dev_id), unsafe.Sizeof(dr.dev_id)),
			f("flags", unsafe.Offsetof(dr.flags), unsafe.Sizeof(dr.flags)),
			f("token", unsafe.Offsetof(dr.token), unsafe.Sizeof(dr.token)),
		}},
		"queue_setup": {unsafe.Sizeof(qs), []Field{
			f("dev_id", unsafe.Offsetof(qs.dev_id), unsafe.Sizeof(qs.dev_id)),
			f("queue_id", unsafe.Offsetof(qs.queue_id), unsafe.Sizeof(qs.queue_id)),
			f("flags", unsafe.Offsetof(qs.flags), unsafe.Sizeof(qs.flags)),
			f("buf_addr", unsafe.Offsetof(qs.buf_addr), unsafe.Sizeof(qs.buf_addr)),
			f("buf_len", unsafe.Offsetof(qs.buf_len), unsafe.Sizeof(qs.buf_len)),
			f("fd", unsafe.Offsetof(qs.fd), unsafe.Sizeof(qs.fd)),
			f("reserved0", unsafe.Offsetof(qs.reserved0), unsafe.Sizeof(qs.reserved0)),
			f("reserved", unsafe.Offsetof(qs.reserved), unsafe.Sizeof(qs.reserved)),
		}},
		"request": {unsafe.Sizeof(rq), []Field{
			f("seq", unsafe.Offsetof(rq.seq), unsafe.Sizeof(rq.seq)),
			f("offset", unsafe.Offsetof(rq.offset), unsafe.Sizeof(rq.offset)),
			f("len", unsafe.Offsetof(rq.len), unsafe.Sizeof(rq.len)),
			f("op_flags", unsafe.Offsetof(rq.op_flags), unsafe.Sizeof(rq.op_flags)),
			f("tag", unsafe.Offsetof(rq.tag), unsafe.Sizeof(rq.tag)),
			f("queue_id", unsafe.Offsetof(rq.queue_id), unsafe.Sizeof(rq.queue_id)),
			f("reserved", unsafe.Offsetof(rq.reserved), unsafe.Sizeof(rq.reserved)),
			f("addr", unsafe.Offsetof(rq.addr), unsafe.Sizeof(rq.addr)),
		}},
		"completion": {unsafe.Sizeof(cp), []Field{
			f("seq", unsafe.Offsetof(cp.seq), unsafe.Sizeof(cp.seq)),
			f("tag", unsafe.Offsetof(cp.tag), unsafe.Sizeof(cp.tag)),
			f("flags", unsafe.Offsetof(cp.flags), unsafe.Sizeof(cp.flags)),
			f("result", unsafe.Offsetof(cp.result), unsafe.Sizeof(cp.result)),
			f("addr", unsafe.Offsetof(cp.addr), unsafe.Sizeof(cp.addr)),
		}},
		"batch": {unsafe.Sizeof(bt), []Field{
			f("completions", unsafe.Offsetof(bt.completions), unsafe.Sizeof(bt.completions)),
			f("requests", unsafe.Offsetof(bt.requests), unsafe.Sizeof(bt.requests)),
			f("nr_completions", unsafe.Offsetof(bt.nr_completions), unsafe.Sizeof(bt.nr_completions)),
			f("max_requests", unsafe.Offsetof(bt.max_requests), unsafe.Sizeof(bt.max_requests)),
			f("nr_completed", unsafe.Offsetof(bt.nr_completed), unsafe.Sizeof(bt.nr_completed)),
			f("nr_requests", unsafe.Offsetof(bt.nr_requests), unsafe.Sizeof(bt.nr_requests)),
			f("flags", unsafe.Offsetof(bt.flags), unsafe.Sizeof(bt.flags)),
			f("wait_ms", unsafe.Offsetof(bt.wait_ms), unsafe.Sizeof(bt.wait_ms)),
			f("spin_us", unsafe.Offsetof(bt.spin_us), unsafe.Sizeof(bt.spin_us)),
			f("reserved", unsafe.Offsetof(bt.reserved), unsafe.Sizeof(bt.reserved)),
		}},
		"copy": {unsafe.Sizeof(cy), []Field{
			f("seq", unsafe.Offsetof(cy.seq), unsafe.Sizeof(cy.seq)),
			f("tag", unsafe.Offsetof(cy.tag), unsafe.Sizeof(cy.tag)),
			f("flags", unsafe.Offsetof(cy.flags), unsafe.Sizeof(cy.flags)),
			f("len", unsafe.Offsetof(cy.len), unsafe.Sizeof(cy.len)),
			f("offset", unsafe.Offsetof(cy.offset), unsafe.Sizeof(cy.offset)),
			f("reserved", unsafe.Offsetof(cy.reserved), unsafe.Sizeof(cy.reserved)),
			f("addr", unsafe.Offsetof(cy.addr), unsafe.Sizeof(cy.addr)),
		}},
	}
}

// Ioctls returns the C ioctl numbers by macro name.
func Ioctls() map[string]uintptr {
	return map[string]uintptr{
		"ABUSE_CTL_ADD":            uintptr(C.abuse_ioc_ctl_add()),
		"ABUSE_CTL_ATTACH":         uintptr(C.abuse_ioc_ctl_attach()),
		"ABUSE_CTL_REMOVE":         uintptr(C.abuse_ioc_ctl_remove()),
		"ABUSE_CTL_QUEUE_FD":       uintptr(C.abuse_ioc_ctl_queue_fd()),
		"ABUSE_QUEUE_COMMIT_FETCH": uintptr(C.abuse_ioc_queue_commit_fetch()),
		"ABUSE_QUEUE_COPY":         uintptr(C.abuse_ioc_queue_copy()),
	}
}

// Constants returns the C values of the other macros the Go side mirrors.
func Constants() map[string]int64 {
	return map[string]int64{
		"ABUSE_PROTOCOL_VERSION":     C.ABUSE_PROTOCOL_VERSION,
		"ABUSE_MAX_DEVICES":          C.ABUSE_MAX_DEVICES,
		"ABUSE_MAX_QUEUES":           C.ABUSE_MAX_QUEUES,
		"ABUSE_MAX_DEPTH":            C.ABUSE_MAX_DEPTH,
		"ABUSE_MIN_IO_BYTES":         C.ABUSE_MIN_IO_BYTES,
		"ABUSE_MAX_IO_BYTES":         C.ABUSE_MAX_IO_BYTES,
		"ABUSE_DEF_IO_BYTES":         C.ABUSE_DEF_IO_BYTES,
		"ABUSE_DEF_DEPTH":            C.ABUSE_DEF_DEPTH,
		"ABUSE_MAX_BATCH":            C.ABUSE_MAX_BATCH,
		"ABUSE_MAX_RECONNECT_MS":     C.ABUSE_MAX_RECONNECT_MS,
		"ABUSE_DEF_IO_TIMEOUT_MS":    C.ABUSE_DEF_IO_TIMEOUT_MS,
		"ABUSE_MIN_IO_TIMEOUT_MS":    C.ABUSE_MIN_IO_TIMEOUT_MS,
		"ABUSE_MAX_IO_TIMEOUT_MS":    C.ABUSE_MAX_IO_TIMEOUT_MS,
		"ABUSE_MAX_SIZE":             C.ABUSE_MAX_SIZE,
		"ABUSE_MAX_WAIT_MS":          C.ABUSE_MAX_WAIT_MS,
		"ABUSE_MAX_SPIN_US":          C.ABUSE_MAX_SPIN_US,
		"ABUSE_FEAT_USER_COPY":       C.ABUSE_FEAT_USER_COPY,
		"ABUSE_FEAT_WAIT":            C.ABUSE_FEAT_WAIT,
		"ABUSE_FEAT_ALL":             C.ABUSE_FEAT_ALL,
		"ABUSE_QUEUE_F_USER_COPY":    C.ABUSE_QUEUE_F_USER_COPY,
		"ABUSE_BATCH_F_WAIT":         C.ABUSE_BATCH_F_WAIT,
		"ABUSE_DEV_F_READ_ONLY":      C.ABUSE_DEV_F_READ_ONLY,
		"ABUSE_DEV_F_WRITE_CACHE":    C.ABUSE_DEV_F_WRITE_CACHE,
		"ABUSE_DEV_F_FUA":            C.ABUSE_DEV_F_FUA,
		"ABUSE_DEV_F_TIMEOUT_DEAD":   C.ABUSE_DEV_F_TIMEOUT_DEAD,
		"ABUSE_DEV_F_ALL":            C.ABUSE_DEV_F_ALL,
		"ABUSE_REMOVE_F_FORCE":       C.ABUSE_REMOVE_F_FORCE,
		"ABUSE_OP_READ":              C.ABUSE_OP_READ,
		"ABUSE_OP_WRITE":             C.ABUSE_OP_WRITE,
		"ABUSE_OP_FLUSH":             C.ABUSE_OP_FLUSH,
		"ABUSE_OP_DISCARD":           C.ABUSE_OP_DISCARD,
		"ABUSE_OP_WRITE_ZEROES":      C.ABUSE_OP_WRITE_ZEROES,
		"ABUSE_OP_MASK":              C.ABUSE_OP_MASK,
		"ABUSE_F_FUA":                C.ABUSE_F_FUA,
		"ABUSE_F_PREFLUSH":           C.ABUSE_F_PREFLUSH,
		"ABUSE_F_NOUNMAP":            C.ABUSE_F_NOUNMAP,
		"ABUSE_F_SYNC":               C.ABUSE_F_SYNC,
		"ABUSE_F_META":               C.ABUSE_F_META,
		"ABUSE_F_PRIO":               C.ABUSE_F_PRIO,
		"ABUSE_F_RAHEAD":             C.ABUSE_F_RAHEAD,
		"ABUSE_F_BACKGROUND":         C.ABUSE_F_BACKGROUND,
		"ABUSE_F_NOWAIT":             C.ABUSE_F_NOWAIT,
		"ABUSE_F_IDLE":               C.ABUSE_F_IDLE,
		"ABUSE_F_FAILFAST_DEV":       C.ABUSE_F_FAILFAST_DEV,
		"ABUSE_F_FAILFAST_TRANSPORT": C.ABUSE_F_FAILFAST_TRANSPORT,
		"ABUSE_F_FAILFAST_DRIVER":    C.ABUSE_F_FAILFAST_DRIVER,
	}
}
