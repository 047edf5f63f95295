// Command viam-server is rdk's viam-server (go.viam.com/rdk/web/cmd/server) as its pure-Go build
// (CGO_ENABLED=0, -tags no_cgo) makes it, plus the transform camera. rdk registers
// components/camera/transformpipeline only in cgo and android builds
// (components/camera/register/register_cgoandroid.go), though the package builds without cgo (rdk's
// android builds are no_cgo too); users draw this module's labels with it, so the tier needs it.
// Built by build_viam_server.sh.
package main

import (
	"go.viam.com/utils"

	_ "go.viam.com/rdk/components/arm/wrapper"
	_ "go.viam.com/rdk/components/camera/transformpipeline"
	_ "go.viam.com/rdk/components/register"
	"go.viam.com/rdk/logging"
	_ "go.viam.com/rdk/services/register"
	"go.viam.com/rdk/web/server"
)

func main() {
	utils.ContextualMain(server.RunServer, logging.NewDebugLogger("entrypoint"))
}
