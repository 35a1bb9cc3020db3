-- src/acknowledge.sql: acknowledged verify() findings.

------------------------------------------------------------------------------
-- Acknowledged findings: a DBA accepts a verify() finding about a role or
-- an object (an intended BYPASSRLS reporting role, say).  The
-- acknowledgement keeps a fingerprint of the facts it accepted and lapses
-- when they change.
------------------------------------------------------------------------------

CREATE TABLE tenancy.acknowledgements (
    check_name      text NOT NULL,
    object          text NOT NULL,
    reason          text NOT NULL CONSTRAINT acknowledgements_reason_check CHECK (btrim(reason) OPERATOR(pg_catalog.<>) ''),
    acknowledged_by name NOT NULL DEFAULT session_user,
    acknowledged_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    fingerprint     text NOT NULL,
    PRIMARY KEY (check_name, object)
);
COMMENT ON TABLE tenancy.acknowledgements IS 'verify() findings a DBA accepted, with the fingerprint of the facts accepted';
SELECT pg_catalog.pg_extension_config_dump('tenancy.acknowledgements', '');
REVOKE ALL ON TABLE tenancy.acknowledgements FROM PUBLIC;

-- What kind of object a check's findings are about (NULL: the check's
-- findings cannot be acknowledged).
CREATE FUNCTION tenancy.ack_kind(check_name text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE check_name
               WHEN 'bypassrls_role' THEN 'role'
               WHEN 'security_definer_function' THEN 'function'
               WHEN 'materialized_view' THEN 'relation'
               WHEN 'view_security_invoker' THEN 'relation'
               WHEN 'shared_table' THEN 'relation'
           END;
$$;

-- The facts an acknowledgement accepts: for a role, its attributes, the
-- roles it is a member of and its privileges on every registered and
-- shared table; for a function, its owner, SECURITY DEFINER, body, ACL and
-- settings; for a relation, its owner, kind, ACLs (column ACLs too),
-- options and definition.  NULL when the object does not exist.
CREATE FUNCTION tenancy.ack_fingerprint(check_name text, object text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text := tenancy.ack_kind(check_name);
    obj  oid;
BEGIN
    IF kind = 'role' THEN
        obj := to_regrole(object);
        RETURN (SELECT md5(format('role|%s|%s|%s|%s|%s|%s|%s|member of %s|privileges %s',
                    r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                    r.rolreplication, r.rolbypassrls,
                    (SELECT string_agg(m.roleid::regrole::text || CASE WHEN m.admin_option THEN '+admin' ELSE '' END,
                                       ',' ORDER BY m.roleid::regrole::text)
                       FROM pg_auth_members m WHERE m.member = r.oid),
                    (SELECT string_agg(t.rel::text || ':' || p.privs, ';' ORDER BY t.rel::text)
                       FROM (SELECT x.relation AS rel FROM tenancy.tables x
                             UNION SELECT s.relation FROM tenancy.shared_tables s) t
                       JOIN pg_class c ON c.oid = t.rel,
                       LATERAL (SELECT string_agg(v.priv, ',' ORDER BY v.priv) AS privs
                                  FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) v(priv)
                                 WHERE has_table_privilege(r.oid, t.rel, v.priv)
                                    OR (v.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                                        AND has_any_column_privilege(r.oid, t.rel, v.priv))) p
                      WHERE p.privs IS NOT NULL)))
                  FROM pg_roles r WHERE r.oid = obj);
    ELSIF kind = 'function' THEN
        obj := to_regprocedure(object);
        RETURN (SELECT md5(format('function|%s|%s|%s|%s|%s|%s',
                    p.proowner::regrole, p.prosecdef, md5(p.prosrc), md5(coalesce(p.prosqlbody::text, '')),
                    coalesce(p.proacl::text, 'default'), coalesce(p.proconfig::text, '')))
                  FROM pg_proc p WHERE p.oid = obj);
    ELSIF kind = 'relation' THEN
        obj := to_regclass(object);
        RETURN (SELECT md5(format('relation|%s|%s|%s|%s|%s|%s',
                    c.relowner::regrole, c.relkind, coalesce(c.relacl::text, 'default'),
                    coalesce(c.reloptions::text, ''),
                    (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL AND NOT a.attisdropped),
                    CASE WHEN c.relkind IN ('v', 'm') THEN md5(pg_get_viewdef(c.oid)) END))
                  FROM pg_class c WHERE c.oid = obj);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION tenancy.ack_fingerprint(text, text) IS 'fingerprint of the facts an acknowledgement of a verify() finding accepts';

-- For verify(): whether a finding is acknowledged ('acknowledged'), was
-- and lapsed ('lapsed'), or neither (NULL), and the note to add to its
-- detail.  A caller who cannot read tenancy.acknowledgements sees every
-- finding as it is.
CREATE FUNCTION tenancy.ack_state(check_name text, object text, OUT state text, OUT note text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
BEGIN
    IF NOT has_table_privilege('tenancy.acknowledgements', 'SELECT') THEN
        RETURN;
    END IF;
    SELECT k.reason, k.acknowledged_by, k.acknowledged_at, k.fingerprint INTO a
      FROM tenancy.acknowledgements k
     WHERE k.check_name = ack_state.check_name AND k.object = ack_state.object;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF a.fingerprint = tenancy.ack_fingerprint(ack_state.check_name, ack_state.object) THEN
        state := 'acknowledged';
        note := format('acknowledged by %I at %s: %s', a.acknowledged_by,
                       to_char(a.acknowledged_at, 'YYYY-MM-DD HH24:MI:SSOF'), a.reason);
    ELSE
        state := 'lapsed';
        note := format('the acknowledgement by %I at %s (%s) lapsed: %s changed since; acknowledge it again if it is still intended',
                       a.acknowledged_by, to_char(a.acknowledged_at, 'YYYY-MM-DD HH24:MI:SSOF'), a.reason,
                       ack_state.object);
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.ack_state(text, text) IS 'for verify(): whether a finding is acknowledged, lapsed or neither';

CREATE FUNCTION tenancy.acknowledge(check_name text, object text, reason text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
    name text;
BEGIN
    IF check_name IS NULL OR object IS NULL OR reason IS NULL THEN
        RAISE EXCEPTION 'check_name, object and reason must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    kind := tenancy.ack_kind(check_name);
    IF kind IS NULL THEN
        RAISE EXCEPTION 'findings of check "%" cannot be acknowledged', check_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The checks whose findings can be acknowledged are bypassrls_role (a role), security_definer_function (a function), materialized_view, view_security_invoker and shared_table (a relation).';
    END IF;
    IF btrim(reason) = '' THEN
        RAISE EXCEPTION 'reason must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the finding is intended: the report shows it.';
    END IF;
    name := CASE kind WHEN 'role' THEN to_regrole(object)::text
                      WHEN 'function' THEN to_regprocedure(object)::regprocedure::text
                      ELSE to_regclass(object)::regclass::text END;
    IF name IS NULL THEN
        RAISE EXCEPTION '% "%" does not exist', kind, object
            USING ERRCODE = CASE kind WHEN 'role' THEN 'undefined_object'
                                      WHEN 'function' THEN 'undefined_function' ELSE 'undefined_table' END,
                  HINT = CASE kind WHEN 'role' THEN 'Name the role as verify() shows it.'
                                   WHEN 'function' THEN 'Name the function with its schema and argument types, as in rental.report(numeric).'
                                   ELSE 'Name the relation with its schema, as verify() shows it.' END;
    END IF;
    INSERT INTO tenancy.acknowledgements AS k (check_name, object, reason, fingerprint)
    VALUES (check_name, name, reason, tenancy.ack_fingerprint(check_name, name))
    ON CONFLICT ON CONSTRAINT acknowledgements_pkey DO UPDATE
       SET reason = EXCLUDED.reason, fingerprint = EXCLUDED.fingerprint,
           acknowledged_by = EXCLUDED.acknowledged_by, acknowledged_at = EXCLUDED.acknowledged_at;
    RETURN name;
END
$$;
COMMENT ON FUNCTION tenancy.acknowledge(text, text, text) IS 'accept a verify() finding about a role or object, until the facts it accepted change; returns the object''s name';
REVOKE ALL ON FUNCTION tenancy.acknowledge(text, text, text) FROM PUBLIC;

CREATE FUNCTION tenancy.unacknowledge(check_name text, object text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
BEGIN
    IF check_name IS NULL OR object IS NULL THEN
        RAISE EXCEPTION 'check_name and object must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    kind := tenancy.ack_kind(check_name);
    DELETE FROM tenancy.acknowledgements k
     WHERE k.check_name = unacknowledge.check_name
       AND k.object IN (unacknowledge.object,
                        CASE kind WHEN 'role' THEN to_regrole(unacknowledge.object)::text
                                  WHEN 'function' THEN to_regprocedure(unacknowledge.object)::regprocedure::text
                                  ELSE to_regclass(unacknowledge.object)::regclass::text END);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.unacknowledge(text, text) IS 'withdraw an acknowledgement; false when there was none';
REVOKE ALL ON FUNCTION tenancy.unacknowledge(text, text) FROM PUBLIC;
