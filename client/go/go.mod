// The Nexus Go client. Builds offline: google.golang.org/protobuf comes from Debian's
// golang-google-protobuf-dev (README.md, "Building offline").
module nexus/client/go

go 1.19

require google.golang.org/protobuf v1.28.1

replace google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
