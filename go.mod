module github.com/userland-io/uio

go 1.26.0

require (
	github.com/pawelgaczynski/giouring v0.0.0-20230826085535-69588b89acb9
	go.uber.org/zap v1.28.0
	golang.org/x/sys v0.49.0
)

require (
	go.uber.org/multierr v1.10.0 // indirect
	go.yaml.in/yaml/v3 v3.0.4 // indirect
)
