package policies_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sshca/sshca/policies"
)

// BenchmarkDecideMappings: decision time with the shipped policy as the data grows to 10,
// 1,000 and 10,000 group → principal mappings (the identity is in three of the groups).
func BenchmarkDecideMappings(b *testing.B) {
	raw, err := os.ReadFile("data.json")
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			var doc map[string]any
			if err := json.Unmarshal(raw, &doc); err != nil {
				b.Fatal(err)
			}
			user := doc["sshca_settings"].(map[string]any)["user"].(map[string]any)
			mappings := map[string]any{}
			for i := range n {
				mappings[fmt.Sprintf("team-%d", i)] = []any{fmt.Sprintf("svc%d", i)}
			}
			user["group_principals"] = mappings
			out, _ := json.Marshal(doc)
			path := filepath.Join(b.TempDir(), "data.json")
			if err := os.WriteFile(path, out, 0o600); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			e, err := policies.LoadDir(ctx, ".", policies.WithDataFile(path))
			if err != nil {
				b.Fatal(err)
			}
			in := userInput([]string{"team-1", "team-5", "team-7"})
			d, err := e.Decide(ctx, in)
			if err != nil || !d.Allow || len(d.Principals) != 4 {
				b.Fatalf("decision %+v %v", d, err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := e.Decide(ctx, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
