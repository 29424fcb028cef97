// nexus-gobench: the Go client's throughput (bench/run-clients compares it with nexus-bench,
// the C load generator). Builds offline: the client comes from this repository,
// google.golang.org/protobuf from Debian's golang-google-protobuf-dev (client/go/README.md,
// "Building offline").
module nexus/examples/go/bench

go 1.19

require (
	google.golang.org/protobuf v1.28.1
	nexus/client/go v0.0.0
)

replace (
	google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
	nexus/client/go => ../../../client/go
)
