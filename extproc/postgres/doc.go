// Package postgres is vigil's PostgreSQL protocol processor: message
// framing across chunks, the session state machine for startup,
// authentication, the simple and extended query protocols, COPY and
// function calls, credential injection, and the audit of every command.
//
// It follows the PostgreSQL frontend/backend protocol version 3.0
// (https://www.postgresql.org/docs/15/protocol.html) and decodes messages
// with github.com/jackc/pgx/v5/pgproto3.
package postgres
