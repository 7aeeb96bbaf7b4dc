package pgtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilaudit/vigil/internal/pgtest"
)

// TestStart starts one cluster per method and checks that the right
// password gets in, a wrong one does not (except under trust), and that
// password_encryption matches the method.
func TestStart(t *testing.T) {
	cases := []struct {
		auth    string
		wantEnc string
	}{
		{pgtest.AuthTrust, "scram-sha-256"},
		{pgtest.AuthPassword, "scram-sha-256"},
		{pgtest.AuthMD5, "md5"},
		{pgtest.AuthSCRAM, "scram-sha-256"},
	}
	for _, tc := range cases {
		t.Run(tc.auth, func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Auth: tc.auth})
			c.CreateUser(t, "app_rw", "s3cret 'quoted'")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// The right password connects over TCP, and the user can create tables.
			conn, err := pgx.Connect(ctx, c.DSN("app_rw", "s3cret 'quoted'", "postgres"))
			if err != nil {
				t.Fatalf("connect with the right password: %v", err)
			}
			defer conn.Close(ctx)
			var user, enc, fsync string
			err = conn.QueryRow(ctx, "SELECT current_user, current_setting('password_encryption'),"+
				" current_setting('fsync')").Scan(&user, &enc, &fsync)
			if err != nil {
				t.Fatal(err)
			}
			if user != "app_rw" || enc != tc.wantEnc || fsync != "off" {
				t.Errorf("got user %q, password_encryption %q, fsync %q; want app_rw, %s, off",
					user, enc, fsync, tc.wantEnc)
			}
			if _, err := conn.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
				t.Errorf("create table as app_rw: %v", err)
			}

			// The method in pg_hba.conf is the one asked for.
			var method string
			err = conn.QueryRow(ctx, "SELECT auth_method FROM pg_hba_file_rules "+
				"WHERE type = 'host'").Scan(&method)
			if err == nil {
				t.Errorf("app_rw could read pg_hba_file_rules; want permission denied")
			}
			c.Exec(t, "CREATE TABLE hba AS SELECT auth_method FROM pg_hba_file_rules "+
				"WHERE type = 'host'; GRANT SELECT ON hba TO app_rw")
			if err := conn.QueryRow(ctx, "SELECT auth_method FROM hba").Scan(&method); err != nil {
				t.Fatal(err)
			}
			if method != tc.auth {
				t.Errorf("pg_hba host method %q, want %q", method, tc.auth)
			}

			// A wrong password fails, except under trust.
			bad, err := pgx.Connect(ctx, c.DSN("app_rw", "wrong", "postgres"))
			if tc.auth == pgtest.AuthTrust {
				if err != nil {
					t.Errorf("trust: connect with any password: %v", err)
				} else {
					bad.Close(ctx)
				}
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				if bad != nil {
					bad.Close(ctx)
				}
				t.Errorf("connect with a wrong password: got %v, want SQLSTATE 28P01", err)
			}
		})
	}
}

// TestSuperuserOverTCP checks the documented superuser password and that
// Options.Settings reach postgresql.conf.
func TestSuperuserOverTCP(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Auth: pgtest.AuthSCRAM,
		Settings: map[string]string{"work_mem": "7MB"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(pgtest.Superuser, pgtest.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var super bool
	var workMem string
	if err := conn.QueryRow(ctx, "SELECT rolsuper, current_setting('work_mem') FROM pg_roles "+
		"WHERE rolname = current_user").Scan(&super, &workMem); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Errorf("%s is not a superuser", pgtest.Superuser)
	}
	if workMem != "7MB" {
		t.Errorf("work_mem %q, want 7MB from Options.Settings", workMem)
	}
}
