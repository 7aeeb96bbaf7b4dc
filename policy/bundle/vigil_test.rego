package vigil_test

import data.vigil

agent := {"oid": "0001", "appid": "c0ffee", "idtyp": "app", "roles": ["Db.Read"]}

person := {"oid": "0002", "idtyp": "user", "upn": "ana@example.com"}

conn(grant) := {"name": "customer-db", "type": "postgres", "grant": grant}

stmt(tag, writes, ddl, where) := {
	"tag": tag, "tables": [{"name": "t", "access": "write"}], "functions": [],
	"has_where": where, "writes": writes, "ddl": ddl,
}

select_stmt := {
	"tag": "SELECT", "tables": [{"name": "customers", "access": "read"}],
	"functions": ["lower"], "has_where": false, "writes": false, "ddl": false,
}

# decide evaluates the decision on one input document.
decide(x) := d if {
	d := vigil.decision with input as x
}

cmd(stmts) := {"protocol": "postgres", "message": "query", "statements": stmts}

doc(id, grant, stmts) := {"identity": id, "connection": conn(grant), "command": cmd(stmts)}

test_agent_select_allowed if {
	d := decide(doc(agent, "role:Db.Read", [select_stmt]))
	d.allow
	d.rules == []
	d.approval == null
}

test_agent_select_is_masked if {
	d := decide(doc(agent, "role:Db.Read", [select_stmt]))
	{"column": "email", "strategy": "partial"} in d.mask
	{"detector": "card", "strategy": "redact"} in d.mask
}

test_unmasked_grant_sees_clear_values if {
	d := decide(doc(person, "group:dba", [select_stmt]))
	d.mask == []
}

test_delete_without_where_denied_for_everyone if {
	d := decide(doc(person, "group:dba", [stmt("DELETE", true, false, false)]))
	not d.allow
	"deny_delete_without_where" in d.rules
}

test_update_without_where_denied if {
	d := decide(doc(agent, "role:Db.Write", [stmt("UPDATE", true, false, false)]))
	not d.allow
	d.rules == ["deny_update_without_where"]
}

test_delete_in_cte_denied if {
	delete := stmt("DELETE", true, false, false)
	outer := object.union(select_stmt, {"writes": true, "nested": [delete]})
	d := decide(doc(agent, "role:Db.Write", [outer]))
	not d.allow
	d.rules == ["deny_delete_without_where"]
}

test_explain_analyze_delete_denied if {
	delete := stmt("DELETE", true, false, false)
	explain := object.union(stmt("EXPLAIN", true, false, false), {"nested": [delete]})
	d := decide(doc(person, "", [explain]))
	not d.allow
	"deny_delete_without_where" in d.rules
}

test_second_statement_denies_the_command if {
	d := decide(doc(person, "", [select_stmt, stmt("DELETE", true, false, false)]))
	not d.allow
}

test_agent_read_only_by_default if {
	d := decide(doc(agent, "role:Db.Read", [stmt("INSERT", true, false, false)]))
	not d.allow
	d.rules == ["deny_agent_write"]
}

test_agent_write_in_cte_needs_grant if {
	insert := stmt("INSERT", true, false, false)
	outer := object.union(select_stmt, {"writes": true, "nested": [insert]})
	d := decide(doc(agent, "role:Db.Read", [outer]))
	d.rules == ["deny_agent_write"]
}

test_agent_write_granted if {
	d := decide(doc(agent, "role:Db.Write", [stmt("DELETE", true, false, true)]))
	d.allow
}

test_person_may_write if {
	d := decide(doc(person, "group:billing", [stmt("INSERT", true, false, false)]))
	d.allow
}

test_token_without_idtyp_is_an_agent if {
	d := decide(doc({"oid": "0003"}, "role:Db.Read", [stmt("INSERT", true, false, false)]))
	not d.allow
}

test_agent_ddl_denied if {
	d := decide(doc(agent, "role:Db.Write", [stmt("CREATE TABLE", true, true, false)]))
	not d.allow
	d.rules == ["deny_agent_ddl"]
}

test_agent_drop_table_held_for_dba if {
	d := decide(doc(agent, "role:Db.Read", [stmt("DROP TABLE", true, true, false)]))
	d.allow
	d.rules == ["hold_for_approval"]
	d.approval.approvers == ["group:dba"]
	d.approval.timeout == "15m"
}

test_agent_truncate_held if {
	d := decide(doc(agent, "role:Db.Read", [stmt("TRUNCATE TABLE", true, false, false)]))
	d.allow
	d.approval.approvers == ["group:dba"]
}

test_denial_wins_over_hold if {
	stmts := [stmt("TRUNCATE TABLE", true, false, false), stmt("DELETE", true, false, false)]
	d := decide(doc(agent, "role:Db.Write", stmts))
	not d.allow
	d.approval == null
	d.rules == ["deny_delete_without_where"]
}

test_agent_denied_function_even_schema_qualified if {
	s := object.union(select_stmt, {"functions": ["pg_catalog.pg_read_file"]})
	d := decide(doc(agent, "role:Db.Read", [s]))
	d.rules == ["deny_agent_function"]
}

test_agent_large_object_writes_denied if {
	s := object.union(select_stmt, {"functions": ["lo_creat"]})
	d := decide(doc(agent, "role:Db.Read", [s]))
	d.rules == ["deny_agent_function"]
}

test_agent_fast_path_function_call_denied if {
	c := {"protocol": "postgres", "message": "function_call", "function": 957, "statements": []}
	d := decide({"identity": agent, "connection": conn("role:Db.Write"), "command": c})
	"deny_agent_function_call" in d.rules
}

test_unparsed_denied if {
	c := {"protocol": "postgres", "statements": [], "parse_error": "syntax error"}
	d := decide({"identity": person, "connection": conn(""), "command": c})
	d.rules == ["deny_unparsed"]
}

test_function_call_protocol_denied_for_agents if {
	c := {"protocol": "postgres", "message": "function_call", "statements": []}
	d := decide({"identity": agent, "connection": conn("role:Db.Read"), "command": c})
	d.rules == ["deny_agent_function_call"]
}
