//go:build giouring

package uring

import "testing"

// TestLayout: the mirrors of giouring's unexported ring structs match the
// pinned version (the giouring setup refuses to run otherwise).
func TestLayout(t *testing.T) {
	if layoutErr != nil {
		t.Fatal(layoutErr)
	}
}
