package uring

import "unsafe"

func unsafePtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

func unsafePtr2(s *Sockaddr) unsafe.Pointer { return unsafe.Pointer(&s.raw) }
