//go:build tools

// Package tools records the helm binary built from this module (see ../build-tools.sh) so that
// `go mod tidy` keeps its dependencies.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
