// An external handler for nexusd written with the Go client (README.md). Builds offline:
// the client comes from this repository, google.golang.org/protobuf from Debian's
// golang-google-protobuf-dev (client/go/README.md, "Building offline").
module nexus/examples/go/campaign_state

go 1.19

require (
	google.golang.org/protobuf v1.28.1
	nexus/client/go v0.0.0
)

replace (
	google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
	nexus/client/go => ../../../client/go
)
