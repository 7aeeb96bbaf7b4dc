# METADATA
# title: vigil default policy
# description: |
#   The policy vigil ships with. Agents read; they write only what their
#   grant allows, never change schema, and DROP TABLE or TRUNCATE wait for a
#   DBA's approval. Nobody runs UPDATE or DELETE without a WHERE. Personal
#   data is masked in results. Settings live in data.json
#   (data.vigil.settings); see policy/README.md.
package vigil

cfg := data.vigil.settings

# The answer vigil reads for every command.
decision := {
	"allow": allow,
	"reasons": reasons,
	"rules": rules,
	"mask": mask,
	"approval": approval,
}

default allow := false

allow if count(deny) == 0

reasons := [r | some r in sort({d.reason | some d in deny} | hold_reasons)]

rules := sort({d.rule | some d in deny} | hold_rules)

# ---------------------------------------------------------------------------
# Who is an agent.
#
# With cfg.agents = "non-user" (the default), every identity that is
# not a person is an agent: app-only tokens (idtyp "app") and tokens without
# idtyp or UPN alike, so that an API app that did not configure the optional
# idtyp claim is still treated as an agent. A person is a token with idtyp
# "user" or a UPN. With cfg.agents = "all", people are agents too.

is_person if input.identity.idtyp == "user"

is_person if input.identity.upn != ""

is_agent if cfg.agents == "all"

is_agent if not is_person

# ---------------------------------------------------------------------------
# Statements: every top-level statement and everything nested in one (a
# DELETE in a CTE, the statement of EXPLAIN ANALYZE or PREPARE).

statements contains s if some s in input.command.statements

statements contains n if {
	some s in input.command.statements
	some n in s.nested
}

# The tags a top-level statement writes with: its own tag when nothing nested
# in it writes, otherwise the tags of the nested statements that write.
write_tags(s) := {t |
	s.writes
	not nested_writes(s)
	t := s.tag
} | {n.tag | some n in s.nested; n.writes}

nested_writes(s) if {
	some n in s.nested
	n.writes
}

granted_tags := {t | some t in cfg.grant_tags[input.connection.grant]}

held_tags := {t | some t in cfg.approval.tags}

function_name(f) := parts[count(parts) - 1] if parts := split(f, ".")

# ---------------------------------------------------------------------------
# Denials. Each is {"rule": name, "reason": text for the client}.

deny contains {
	"rule": "deny_delete_without_where",
	"reason": "DELETE without a WHERE clause would remove every row",
} if {
	some s in statements
	s.tag == "DELETE"
	not s.has_where
}

deny contains {
	"rule": "deny_update_without_where",
	"reason": "UPDATE without a WHERE clause would change every row",
} if {
	some s in statements
	s.tag == "UPDATE"
	not s.has_where
}

deny contains {
	"rule": "deny_agent_ddl",
	"reason": sprintf("agents may not change schema (%s)", [s.tag]),
} if {
	is_agent
	some s in input.command.statements
	s.ddl
	not s.tag in held_tags
	not s.tag in granted_tags
}

deny contains {
	"rule": "deny_agent_write",
	"reason": sprintf("grant %q is read-only here (%s)", [input.connection.grant, tag]),
} if {
	is_agent
	some s in input.command.statements
	not s.ddl
	some tag in write_tags(s)
	not tag in granted_tags
	not tag in held_tags
}

deny contains {
	"rule": "deny_agent_function",
	"reason": sprintf("agents may not call %s", [f]),
} if {
	is_agent
	some s in statements
	some f in s.functions
	function_name(f) in cfg.denied_functions
}

deny contains {
	"rule": "deny_agent_function_call",
	"reason": "agents may not use the fast-path function call protocol",
} if {
	is_agent
	input.command.message == "function_call"
}

deny contains {
	"rule": "deny_unparsed",
	"reason": "the statement could not be parsed, so it cannot be checked",
} if {
	input.command.parse_error
}

# ---------------------------------------------------------------------------
# Approval: destructive statements by agents wait for an approver.

holds contains tag if {
	is_agent
	some s in input.command.statements
	some tag in {s.tag} | write_tags(s)
	tag in held_tags
}

hold_rules := {"hold_for_approval" | count(holds) > 0; allow}

hold_reasons := {sprintf("%s waits for approval by %s", [tag, approvers]) |
	approvers := concat(", ", cfg.approval.approvers)
	some tag in holds
	allow
}

default approval := null

approval := {
	"approvers": cfg.approval.approvers,
	"timeout": cfg.approval.timeout,
	# once: this execution only; window: the same statement from the same
	# identity runs again without asking until the window closes.
	"scope": object.get(cfg.approval, "scope", "once"),
	"window": object.get(cfg.approval, "window", "10m"),
} if {
	count(holds) > 0
	allow
}

# ---------------------------------------------------------------------------
# Masking, for everyone but the grants in cfg.unmasked_grants.

default mask := []

mask := array.concat(cfg.mask_columns, cfg.mask_detectors) if {
	not input.connection.grant in cfg.unmasked_grants
}
