package approvals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// notifyChannel is the LISTEN/NOTIFY channel; the payload is a request id.
const notifyChannel = "vigil_approvals"

// listLimit bounds the rows List returns (the newest ones).
const listLimit = 1000

// migrations are the numbered schema changes, applied in order; the one at
// index i brings the schema to version i+1. Never edit a released entry:
// append a new one.
var migrations = []string{
	// 1: requests and their steps.
	`CREATE TABLE vigil_approvals.requests (
		id            text PRIMARY KEY,
		created       timestamptz NOT NULL,
		status        text NOT NULL,
		requester_key text NOT NULL,
		connection    text NOT NULL,
		sql           text NOT NULL,
		scope         text NOT NULL,
		window_end    timestamptz,
		request       jsonb NOT NULL
	);
	CREATE INDEX requests_status ON vigil_approvals.requests (status, created);
	CREATE INDEX requests_window ON vigil_approvals.requests
		(requester_key, connection, window_end)
		WHERE status = 'approved' AND scope = 'window';
	CREATE TABLE vigil_approvals.steps (
		request_id text NOT NULL
			REFERENCES vigil_approvals.requests (id) ON DELETE CASCADE,
		seq        integer NOT NULL,
		step       jsonb NOT NULL,
		PRIMARY KEY (request_id, seq)
	);`,
}

// PostgresStore keeps requests in PostgreSQL, in vigil's own schema
// vigil_approvals, for deployments where several replicas share them.
// Decisions take the request's row lock and change it only while it is
// pending. Every step and decision sends NOTIFY vigil_approvals with the
// request id; Watch listens for them.
//
// TODO(approvals): ended requests are kept for good; a retention sweep
// (DELETE of requests ended long ago) would bound the table.
type PostgresStore struct {
	pool *pgxpool.Pool
}

// NewPostgresStore connects to dsn (a libpq URL or key=value string),
// creates or migrates the vigil_approvals schema, and returns the store.
// The role needs CREATE on the database the first time.
func NewPostgresStore(ctx context.Context, dsn string) (*PostgresStore, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("approvals: postgres store: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &PostgresStore{pool: pool}, nil
}

// migrate brings the schema to the latest version, under a transaction
// advisory lock so that replicas starting together migrate once.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx,
			`SELECT pg_advisory_xact_lock(hashtext('vigil_approvals.migrate'))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS vigil_approvals;
			CREATE TABLE IF NOT EXISTS vigil_approvals.schema_version (
				version integer PRIMARY KEY,
				applied timestamptz NOT NULL DEFAULT now()
			)`); err != nil {
			return err
		}
		var cur int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0)
			FROM vigil_approvals.schema_version`).Scan(&cur); err != nil {
			return err
		}
		if cur > len(migrations) {
			return fmt.Errorf("schema version %d is newer than this vigil knows (%d)",
				cur, len(migrations))
		}
		for v := cur + 1; v <= len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO vigil_approvals.schema_version (version)
				VALUES ($1)`, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("approvals: postgres store: migrate: %w", err)
	}
	return nil
}

// Create implements Store.
func (p *PostgresStore) Create(ctx context.Context, r *Request, first Step) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("approvals: postgres store: %w", err)
	}
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO vigil_approvals.requests
			(id, created, status, requester_key, connection, sql, scope, request)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			r.ID, r.Created, r.Status, requesterKey(r.Requester), r.Connection, r.SQL,
			r.Scope, string(body)); err != nil {
			return err
		}
		return addStep(ctx, tx, r.ID, first)
	})
	if err != nil {
		return fmt.Errorf("approvals: postgres store: create %s: %w", r.ID, err)
	}
	return nil
}

// Get implements Store.
func (p *PostgresStore) Get(ctx context.Context, id string) (*Request, []Step, error) {
	var body []byte
	err := p.pool.QueryRow(ctx, `SELECT request FROM vigil_approvals.requests WHERE id = $1`,
		id).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("approvals: postgres store: get %s: %w", id, err)
	}
	r, err := decodeRequest(body)
	if err != nil {
		return nil, nil, err
	}
	rows, err := p.pool.Query(ctx, `SELECT step FROM vigil_approvals.steps
		WHERE request_id = $1 ORDER BY seq`, id)
	if err != nil {
		return nil, nil, fmt.Errorf("approvals: postgres store: steps of %s: %w", id, err)
	}
	steps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Step, error) {
		var b []byte
		var s Step
		if err := row.Scan(&b); err != nil {
			return s, err
		}
		return s, json.Unmarshal(b, &s)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("approvals: postgres store: steps of %s: %w", id, err)
	}
	return r, steps, nil
}

// List implements Store. It returns at most the 1000 newest matches.
func (p *PostgresStore) List(ctx context.Context, status string) ([]*Request, error) {
	rows, err := p.pool.Query(ctx, `SELECT request FROM vigil_approvals.requests
		WHERE $1 = '' OR status = $1 ORDER BY created DESC, id DESC LIMIT $2`,
		status, listLimit)
	if err != nil {
		return nil, fmt.Errorf("approvals: postgres store: list: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Request, error) {
		var b []byte
		if err := row.Scan(&b); err != nil {
			return nil, err
		}
		return decodeRequest(b)
	})
	if err != nil {
		return nil, fmt.Errorf("approvals: postgres store: list: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}

// AddStep implements Store.
func (p *PostgresStore) AddStep(ctx context.Context, id string, s Step) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM vigil_approvals.requests
			WHERE id = $1 FOR UPDATE`, id).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		return addStep(ctx, tx, id, s)
	})
	if err != nil {
		return fmt.Errorf("approvals: postgres store: add step to %s: %w", id, err)
	}
	return nil
}

// Decide implements Store.
func (p *PostgresStore) Decide(ctx context.Context, id string, d Decision) (*Request, error) {
	var out *Request
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		// Lock the row; only a pending request changes.
		var body []byte
		err := tx.QueryRow(ctx, `SELECT request FROM vigil_approvals.requests
			WHERE id = $1 FOR UPDATE`, id).Scan(&body)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		r, err := decodeRequest(body)
		if err != nil {
			return err
		}
		if !r.Pending() {
			return fmt.Errorf("%w: %s is %s", ErrNotPending, id, r.Status)
		}

		// The decision, guarded by the status once more.
		d.apply(r)
		var windowEnd *time.Time
		if r.Status == StatusApproved && r.Scope == ScopeWindow {
			end := r.Decided.Add(r.Window)
			windowEnd = &end
		}
		if body, err = json.Marshal(r); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE vigil_approvals.requests
			SET status = $2, window_end = $3, request = $4
			WHERE id = $1 AND status = 'pending'`, id, r.Status, windowEnd, string(body))
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%w: %s", ErrNotPending, id)
		}
		out = r
		return addStep(ctx, tx, id, d.step())
	})
	if err != nil {
		return nil, fmt.Errorf("approvals: postgres store: decide %s: %w", id, err)
	}
	return out, nil
}

// Covered implements Store.
func (p *PostgresStore) Covered(ctx context.Context, key, connection, sql string,
	now time.Time) (bool, error) {
	var ok bool
	err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM vigil_approvals.requests
		WHERE status = 'approved' AND scope = 'window' AND requester_key = $1
		AND connection = $2 AND sql = $3 AND window_end > $4)`,
		key, connection, sql, now).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("approvals: postgres store: covered: %w", err)
	}
	return ok, nil
}

// Watch implements Watcher with LISTEN vigil_approvals on a connection of
// its own, which it closes when it returns.
func (p *PostgresStore) Watch(ctx context.Context, changed func(id string)) error {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("approvals: postgres store: watch: %w", err)
	}
	conn := c.Hijack() // a listening connection must not return to the pool
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return fmt.Errorf("approvals: postgres store: listen: %w", err)
	}
	changed("") // changes made before LISTEN were not announced
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("approvals: postgres store: watch: %w", err)
		}
		changed(n.Payload)
	}
}

// Close implements Store.
func (p *PostgresStore) Close() error {
	p.pool.Close()
	return nil
}

// addStep appends s to request id's steps and announces the change; the
// caller holds the request's row lock.
func addStep(ctx context.Context, tx pgx.Tx, id string, s Step) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO vigil_approvals.steps (request_id, seq, step)
		SELECT $1, coalesce(max(seq), 0) + 1, $2 FROM vigil_approvals.steps
		WHERE request_id = $1`, id, string(b)); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, id)
	return err
}

func decodeRequest(b []byte) (*Request, error) {
	r := new(Request)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("approvals: postgres store: stored request: %w", err)
	}
	return r, nil
}
