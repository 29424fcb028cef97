// SPDX-License-Identifier: Apache-2.0

package nexuspb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// The committed .pb.go files are what generate.sh writes from proto/ today. Without protoc or
// protoc-gen-go the check cannot run: it then fails when NEXUS_GO_REQUIRE_TOOLS=1 (set by the
// CMake test, whose machine has them), and is skipped, saying so, otherwise.
func TestGeneratedUpToDate(t *testing.T) {
	for _, tool := range []string{"protoc", "protoc-gen-go"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("NEXUS_GO_REQUIRE_TOOLS") == "1" {
				t.Fatalf("%s not found (Debian: apt-get install protobuf-compiler protoc-gen-go)", tool)
			}
			t.Skipf("%s not found: cannot check that nexuspb is up to date with proto/", tool)
		}
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "../generate.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, b)
	}
	for _, name := range []string{"nexus.pb.go", "common.pb.go"} {
		fresh, err := os.ReadFile(filepath.Join(out, "nexuspb", name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("nexuspb/%s is out of date with proto/: run client/go/generate.sh and commit it", name)
		}
	}
}

// The generated types keep the ancestor's field numbers (docs/PROTOCOL.md): an emit with a
// payload encodes as the protocol document says, byte for byte.
func TestWireNumbers(t *testing.T) {
	data, err := structpb.NewStruct(map[string]any{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	f := &Frame{Correlation: 7, Body: &Frame_Emit{Emit: &EventRequest{
		EventType: "x:y:v1:completed", CampaignId: 3, Payload: &Payload{Data: data},
	}}}
	got, err := proto.MarshalOptions{Deterministic: true}.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x08, 7, // Frame.correlation = 7
		0x22, 34, // Frame.emit (4), 34 bytes
		0x12, 16, 'x', ':', 'y', ':', 'v', '1', ':', 'c', 'o', 'm', 'p', 'l', 'e', 't', 'e', 'd',
		0x28, 3, // campaign_id (5) = 3
		0x32, 12, // payload (6)
		0x0a, 10, // Payload.data (1): Struct
		0x0a, 8, // Struct.fields (1): a map entry
		0x0a, 1, 'a', // its key
		0x12, 3, 0x1a, 1, 'b', // its value: Value.string_value (3) "b"
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encoded\n% x\nwant\n% x", got, want)
	}
}
