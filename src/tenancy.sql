-- Install script of the tenancy extension, concatenated from the SQL sources
-- src/*.sql in the order of SQL_SOURCES (Makefile); edit those, not the
-- built script.  src/tenancy.sql: the preamble.
-- Everything is schema-qualified; nothing here depends on search_path.

\echo Use "CREATE EXTENSION tenancy" to load this file. \quit

GRANT USAGE ON SCHEMA tenancy TO PUBLIC;
