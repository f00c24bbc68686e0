//go:build tools

// Package tools records the skaffold binary built from this module (see ../build-tools.sh) so that
// `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold"
