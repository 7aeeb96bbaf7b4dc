package policy

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// class is how much a statement changes, after PostgreSQL's own
// log_statement levels (GetCommandLogLevel in tcop/utility.c), made stricter
// where a statement can change data that the parser cannot see (DO, CALL)
// or rewrites storage (VACUUM, CLUSTER, REINDEX).
type class int

const (
	classRead class = iota // reads only, or changes session state
	classMod               // changes data
	classDDL               // changes schema, roles, privileges or the server
)

// fixedTags names the statements whose tag does not depend on their fields.
// Anything missing here and in tagOf is named from its node type and
// treated as DDL.
var fixedTags = map[string]struct {
	tag string
	cl  class
}{
	"InsertStmt":                   {"INSERT", classMod},
	"UpdateStmt":                   {"UPDATE", classMod},
	"DeleteStmt":                   {"DELETE", classMod},
	"MergeStmt":                    {"MERGE", classMod},
	"TruncateStmt":                 {"TRUNCATE TABLE", classMod},
	"DoStmt":                       {"DO", classMod},
	"CallStmt":                     {"CALL", classMod},
	"ClusterStmt":                  {"CLUSTER", classMod},
	"ReindexStmt":                  {"REINDEX", classMod},
	"CheckPointStmt":               {"CHECKPOINT", classMod},
	"ExplainStmt":                  {"EXPLAIN", classRead},
	"PrepareStmt":                  {"PREPARE", classRead},
	"ExecuteStmt":                  {"EXECUTE", classRead},
	"DeclareCursorStmt":            {"DECLARE CURSOR", classRead},
	"VariableShowStmt":             {"SHOW", classRead},
	"ListenStmt":                   {"LISTEN", classRead},
	"UnlistenStmt":                 {"UNLISTEN", classRead},
	"NotifyStmt":                   {"NOTIFY", classRead},
	"LockStmt":                     {"LOCK TABLE", classRead},
	"ConstraintsSetStmt":           {"SET CONSTRAINTS", classRead},
	"LoadStmt":                     {"LOAD", classDDL},
	"CreateStmt":                   {"CREATE TABLE", classDDL},
	"CreateForeignTableStmt":       {"CREATE FOREIGN TABLE", classDDL},
	"CreateSchemaStmt":             {"CREATE SCHEMA", classDDL},
	"CreateDomainStmt":             {"CREATE DOMAIN", classDDL},
	"CreateTableSpaceStmt":         {"CREATE TABLESPACE", classDDL},
	"DropTableSpaceStmt":           {"DROP TABLESPACE", classDDL},
	"AlterTableSpaceOptionsStmt":   {"ALTER TABLESPACE", classDDL},
	"CreateExtensionStmt":          {"CREATE EXTENSION", classDDL},
	"AlterExtensionStmt":           {"ALTER EXTENSION", classDDL},
	"AlterExtensionContentsStmt":   {"ALTER EXTENSION", classDDL},
	"CreateFdwStmt":                {"CREATE FOREIGN DATA WRAPPER", classDDL},
	"AlterFdwStmt":                 {"ALTER FOREIGN DATA WRAPPER", classDDL},
	"CreateForeignServerStmt":      {"CREATE SERVER", classDDL},
	"AlterForeignServerStmt":       {"ALTER SERVER", classDDL},
	"CreateUserMappingStmt":        {"CREATE USER MAPPING", classDDL},
	"AlterUserMappingStmt":         {"ALTER USER MAPPING", classDDL},
	"DropUserMappingStmt":          {"DROP USER MAPPING", classDDL},
	"ImportForeignSchemaStmt":      {"IMPORT FOREIGN SCHEMA", classDDL},
	"CommentStmt":                  {"COMMENT", classDDL},
	"SecLabelStmt":                 {"SECURITY LABEL", classDDL},
	"AlterDomainStmt":              {"ALTER DOMAIN", classDDL},
	"AlterDefaultPrivilegesStmt":   {"ALTER DEFAULT PRIVILEGES", classDDL},
	"CompositeTypeStmt":            {"CREATE TYPE", classDDL},
	"CreateEnumStmt":               {"CREATE TYPE", classDDL},
	"CreateRangeStmt":              {"CREATE TYPE", classDDL},
	"AlterEnumStmt":                {"ALTER TYPE", classDDL},
	"AlterTypeStmt":                {"ALTER TYPE", classDDL},
	"ViewStmt":                     {"CREATE VIEW", classDDL},
	"IndexStmt":                    {"CREATE INDEX", classDDL},
	"RuleStmt":                     {"CREATE RULE", classDDL},
	"CreateSeqStmt":                {"CREATE SEQUENCE", classDDL},
	"AlterSeqStmt":                 {"ALTER SEQUENCE", classDDL},
	"CreatedbStmt":                 {"CREATE DATABASE", classDDL},
	"AlterDatabaseStmt":            {"ALTER DATABASE", classDDL},
	"AlterDatabaseRefreshCollStmt": {"ALTER DATABASE", classDDL},
	"AlterDatabaseSetStmt":         {"ALTER DATABASE", classDDL},
	"DropdbStmt":                   {"DROP DATABASE", classDDL},
	"RefreshMatViewStmt":           {"REFRESH MATERIALIZED VIEW", classDDL},
	"AlterSystemStmt":              {"ALTER SYSTEM", classDDL},
	"CreateTransformStmt":          {"CREATE TRANSFORM", classDDL},
	"CreateTrigStmt":               {"CREATE TRIGGER", classDDL},
	"CreateEventTrigStmt":          {"CREATE EVENT TRIGGER", classDDL},
	"AlterEventTrigStmt":           {"ALTER EVENT TRIGGER", classDDL},
	"CreatePlangStmt":              {"CREATE LANGUAGE", classDDL},
	"CreateRoleStmt":               {"CREATE ROLE", classDDL},
	"AlterRoleStmt":                {"ALTER ROLE", classDDL},
	"AlterRoleSetStmt":             {"ALTER ROLE", classDDL},
	"DropRoleStmt":                 {"DROP ROLE", classDDL},
	"DropOwnedStmt":                {"DROP OWNED", classDDL},
	"ReassignOwnedStmt":            {"REASSIGN OWNED", classDDL},
	"CreateConversionStmt":         {"CREATE CONVERSION", classDDL},
	"CreateCastStmt":               {"CREATE CAST", classDDL},
	"CreateOpClassStmt":            {"CREATE OPERATOR CLASS", classDDL},
	"CreateOpFamilyStmt":           {"CREATE OPERATOR FAMILY", classDDL},
	"AlterOpFamilyStmt":            {"ALTER OPERATOR FAMILY", classDDL},
	"AlterOperatorStmt":            {"ALTER OPERATOR", classDDL},
	"AlterTsdictionaryStmt":        {"ALTER TEXT SEARCH DICTIONARY", classDDL},
	"AlterTsconfigurationStmt":     {"ALTER TEXT SEARCH CONFIGURATION", classDDL},
	"CreatePolicyStmt":             {"CREATE POLICY", classDDL},
	"AlterPolicyStmt":              {"ALTER POLICY", classDDL},
	"CreateAmStmt":                 {"CREATE ACCESS METHOD", classDDL},
	"CreatePublicationStmt":        {"CREATE PUBLICATION", classDDL},
	"AlterPublicationStmt":         {"ALTER PUBLICATION", classDDL},
	"CreateSubscriptionStmt":       {"CREATE SUBSCRIPTION", classDDL},
	"AlterSubscriptionStmt":        {"ALTER SUBSCRIPTION", classDDL},
	"DropSubscriptionStmt":         {"DROP SUBSCRIPTION", classDDL},
	"AlterCollationStmt":           {"ALTER COLLATION", classDDL},
	"CreateStatsStmt":              {"CREATE STATISTICS", classDDL},
	"AlterStatsStmt":               {"ALTER STATISTICS", classDDL},
}

// tagOf returns the command tag PostgreSQL gives the statement and its class.
// Tags follow CreateCommandTag in tcop/utility.c.
func tagOf(n *pg.Node) (string, class) {
	switch s := n.GetNode().(type) {
	case *pg.Node_SelectStmt:
		if s.SelectStmt.GetIntoClause() != nil {
			return "SELECT INTO", classDDL
		}
		return "SELECT", classRead
	case *pg.Node_TransactionStmt:
		return transactionTag(s.TransactionStmt.Kind), classRead
	case *pg.Node_VariableSetStmt:
		k := s.VariableSetStmt.Kind
		if k == pg.VariableSetKind_VAR_RESET || k == pg.VariableSetKind_VAR_RESET_ALL {
			return "RESET", classRead
		}
		return "SET", classRead
	case *pg.Node_DiscardStmt:
		return "DISCARD " + enumWords(s.DiscardStmt.Target.String(), "DISCARD_"), classRead
	case *pg.Node_DeallocateStmt:
		if s.DeallocateStmt.Isall {
			return "DEALLOCATE ALL", classRead
		}
		return "DEALLOCATE", classRead
	case *pg.Node_ClosePortalStmt:
		if s.ClosePortalStmt.Portalname == "" {
			return "CLOSE CURSOR ALL", classRead
		}
		return "CLOSE CURSOR", classRead
	case *pg.Node_FetchStmt:
		if s.FetchStmt.Ismove {
			return "MOVE", classRead
		}
		return "FETCH", classRead
	case *pg.Node_CopyStmt:
		return "COPY", copyClass(s.CopyStmt)
	case *pg.Node_VacuumStmt:
		if s.VacuumStmt.IsVacuumcmd {
			return "VACUUM", classMod
		}
		return "ANALYZE", classMod
	case *pg.Node_DropStmt:
		return "DROP " + objectWords(s.DropStmt.RemoveType), classDDL
	case *pg.Node_AlterTableStmt:
		return "ALTER " + objectWords(s.AlterTableStmt.Objtype), classDDL
	case *pg.Node_AlterTableMoveAllStmt:
		return "ALTER " + objectWords(s.AlterTableMoveAllStmt.Objtype), classDDL
	case *pg.Node_RenameStmt:
		return "ALTER " + objectWords(s.RenameStmt.RenameType), classDDL
	case *pg.Node_AlterObjectDependsStmt:
		return "ALTER " + objectWords(s.AlterObjectDependsStmt.ObjectType), classDDL
	case *pg.Node_AlterObjectSchemaStmt:
		return "ALTER " + objectWords(s.AlterObjectSchemaStmt.ObjectType), classDDL
	case *pg.Node_AlterOwnerStmt:
		return "ALTER " + objectWords(s.AlterOwnerStmt.ObjectType), classDDL
	case *pg.Node_AlterFunctionStmt:
		return "ALTER " + objectWords(s.AlterFunctionStmt.Objtype), classDDL
	case *pg.Node_DefineStmt:
		return "CREATE " + objectWords(s.DefineStmt.Kind), classDDL
	case *pg.Node_CreateFunctionStmt:
		if s.CreateFunctionStmt.IsProcedure {
			return "CREATE PROCEDURE", classDDL
		}
		return "CREATE FUNCTION", classDDL
	case *pg.Node_CreateTableAsStmt:
		switch {
		case s.CreateTableAsStmt.IsSelectInto:
			return "SELECT INTO", classDDL
		case s.CreateTableAsStmt.Objtype == pg.ObjectType_OBJECT_MATVIEW:
			return "CREATE MATERIALIZED VIEW", classDDL
		}
		return "CREATE TABLE AS", classDDL
	case *pg.Node_GrantStmt:
		return grantTag(s.GrantStmt.IsGrant), classDDL
	case *pg.Node_GrantRoleStmt:
		return grantTag(s.GrantRoleStmt.IsGrant), classDDL
	}

	name := typeName(n)
	if t, ok := fixedTags[name]; ok {
		return t.tag, t.cl
	}
	return camelWords(strings.TrimSuffix(name, "Stmt")), classDDL
}

// copyClass: COPY FROM changes a table; COPY to or from a server file or
// program touches the server's file system or runs a command there.
func copyClass(c *pg.CopyStmt) class {
	if c.IsFrom || c.IsProgram || c.Filename != "" {
		return classMod
	}
	return classRead
}

func grantTag(grant bool) string {
	if grant {
		return "GRANT"
	}
	return "REVOKE"
}

func transactionTag(k pg.TransactionStmtKind) string {
	switch k {
	case pg.TransactionStmtKind_TRANS_STMT_BEGIN:
		return "BEGIN"
	case pg.TransactionStmtKind_TRANS_STMT_START:
		return "START TRANSACTION"
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT:
		return "COMMIT"
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK,
		pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return "ROLLBACK"
	case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		return "SAVEPOINT"
	case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
		return "RELEASE"
	case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
		return "PREPARE TRANSACTION"
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		return "COMMIT PREPARED"
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return "ROLLBACK PREPARED"
	}
	return "TRANSACTION"
}

// objectNames holds the object types whose SQL spelling differs from their
// enum name.
var objectNames = map[pg.ObjectType]string{
	pg.ObjectType_OBJECT_MATVIEW:               "MATERIALIZED VIEW",
	pg.ObjectType_OBJECT_FDW:                   "FOREIGN DATA WRAPPER",
	pg.ObjectType_OBJECT_FOREIGN_SERVER:        "SERVER",
	pg.ObjectType_OBJECT_OPCLASS:               "OPERATOR CLASS",
	pg.ObjectType_OBJECT_OPFAMILY:              "OPERATOR FAMILY",
	pg.ObjectType_OBJECT_TSCONFIGURATION:       "TEXT SEARCH CONFIGURATION",
	pg.ObjectType_OBJECT_TSDICTIONARY:          "TEXT SEARCH DICTIONARY",
	pg.ObjectType_OBJECT_TSPARSER:              "TEXT SEARCH PARSER",
	pg.ObjectType_OBJECT_TSTEMPLATE:            "TEXT SEARCH TEMPLATE",
	pg.ObjectType_OBJECT_LARGEOBJECT:           "LARGE OBJECT",
	pg.ObjectType_OBJECT_TABCONSTRAINT:         "TABLE",
	pg.ObjectType_OBJECT_DOMCONSTRAINT:         "DOMAIN",
	pg.ObjectType_OBJECT_COLUMN:                "TABLE",
	pg.ObjectType_OBJECT_ATTRIBUTE:             "TYPE",
	pg.ObjectType_OBJECT_EVENT_TRIGGER:         "EVENT TRIGGER",
	pg.ObjectType_OBJECT_STATISTIC_EXT:         "STATISTICS",
	pg.ObjectType_OBJECT_USER_MAPPING:          "USER MAPPING",
	pg.ObjectType_OBJECT_ACCESS_METHOD:         "ACCESS METHOD",
	pg.ObjectType_OBJECT_PUBLICATION_REL:       "PUBLICATION",
	pg.ObjectType_OBJECT_TRANSFORM:             "TRANSFORM",
	pg.ObjectType_OBJECT_DEFAULT:               "TABLE",
	pg.ObjectType_OBJECT_DEFACL:                "DEFAULT PRIVILEGES",
	pg.ObjectType_OBJECT_AMOP:                  "OPERATOR FAMILY",
	pg.ObjectType_OBJECT_AMPROC:                "OPERATOR FAMILY",
	pg.ObjectType_OBJECT_PUBLICATION_NAMESPACE: "PUBLICATION",
}

func objectWords(t pg.ObjectType) string {
	if s, ok := objectNames[t]; ok {
		return s
	}
	return enumWords(t.String(), "OBJECT_")
}

// enumWords turns "OBJECT_FOREIGN_TABLE" into "FOREIGN TABLE".
func enumWords(s, prefix string) string {
	return strings.ReplaceAll(strings.TrimPrefix(s, prefix), "_", " ")
}

// typeName is the Go name of the statement in a node: "DeleteStmt".
func typeName(n *pg.Node) string {
	m := n.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("node")
	if od == nil {
		return ""
	}
	fd := m.WhichOneof(od)
	if fd == nil || fd.Message() == nil {
		return ""
	}
	return string(fd.Message().Name())
}

// camelWords turns "AlterFooBar" into "ALTER FOO BAR".
func camelWords(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
