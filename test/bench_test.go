package test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vigilaudit/vigil/identity"
)

// BenchmarkSelectThroughGateway runs single-row SELECTs through vigil
// gateway from four connections, extended protocol, to show the cost of
// the data path per command (relay, gRPC, decoding, journal).
func BenchmarkSelectThroughGateway(b *testing.B) {
	benchSelect(b, true)
}

// BenchmarkSelectDirect is the same load against PostgreSQL directly.
func BenchmarkSelectDirect(b *testing.B) { benchSelect(b, false) }

func benchSelect(b *testing.B, through bool) {
	e := startEnv(b, envOptions{quiet: true})
	dsn := e.pg.DSN(upstreamUser, upstreamPassword, "postgres")
	if through {
		dsn = e.vigilDSN(e.mint(b), "postgres")
	}
	const conns = 4
	cs := make([]*pgx.Conn, conns)
	for i := range cs {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close(context.Background())
		cs[i] = c
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/conns + 1
	for _, c := range cs {
		wg.Add(1)
		go func(c *pgx.Conn) {
			defer wg.Done()
			var n int
			for i := 0; i < per; i++ {
				if err := c.QueryRow(context.Background(), "SELECT $1::int", i).Scan(&n); err != nil {
					b.Error(err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
}

func (e *env) mint(tb testing.TB) string {
	tok, err := e.issuer.Mint(identity.TokenSpec{Roles: []string{agentRole},
		Audience: identity.DevAPIAppID})
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}
