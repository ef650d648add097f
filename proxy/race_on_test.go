//go:build race

package proxy

// raceEnabled: this test binary runs under the race detector, whose
// shadow memory makes resident-memory bounds meaningless.
const raceEnabled = true
