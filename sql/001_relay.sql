-- relay: change log with positions in commit order, capture triggers,
-- watch/unwatch, broadcast, current_position.
--
-- How a position is drawn (see architecture.md, "Commit order"):
--   * The first captured change of a transaction draws a batch id and keeps it
--     in the transaction-local setting relay.batch; every change of the
--     transaction goes to relay.changes as (batch, ord) with ord = 1, 2, 3...
--   * A deferred constraint trigger on relay.changes (only for ord = 1, so
--     once per batch) fires at COMMIT: it takes a transaction-scoped advisory
--     lock, reserves `count` consecutive positions from relay.position_seq and
--     records them as the batch's row in relay.batches. The lock is held until
--     the commit is visible, so a batch that commits later always has higher
--     positions than one that committed earlier.
--   * The change at (batch, ord) has position batch.base + ord - 1.
--   * A payload-less NOTIFY on channel `relay` rings the doorbell.

create schema if not exists relay;

create sequence if not exists relay.position_seq as bigint minvalue 1;

create sequence if not exists relay.batch_seq as bigint minvalue 1;

-- One row per committed batch, written at commit.
create table if not exists relay.batches (
    id bigint primary key,
    base bigint not null,        -- first position of the batch
    last_pos bigint not null,    -- base + count - 1
    committed_at timestamptz not null
);
create unique index if not exists batches_last_pos on relay.batches (last_pos);

create table if not exists relay.changes (
    batch bigint not null,
    ord integer not null,
    kind "char" not null,        -- I U D T (truncate) B (broadcast)
    schema_name text,
    table_name text,
    topic text,                  -- broadcast only
    event text,                  -- broadcast only
    user_id text,                -- owner of the new row version (old for D)
    org_id text,
    old_user_id text,            -- owner of the old row version (U only)
    old_org_id text,
    new jsonb,                   -- broadcast: payload
    old jsonb,
    primary key (batch, ord)
);

create table if not exists relay.watched (
    relid oid primary key,
    schema_name text not null,
    table_name text not null,
    user_column text,
    org_column text,
    pk_columns text[] not null,
    exclude_columns text[] not null default '{}',
    keep_old boolean not null default true,
    watched_at timestamptz not null default now()
);

-- The highest position ever pruned; a resume below it must resync.
create table if not exists relay.meta (
    singleton boolean primary key default true check (singleton),
    pruned_through bigint not null default 0
);
insert into relay.meta (singleton) values (true) on conflict do nothing;

-- Record one change in the current transaction's batch. Returns its ord.
create or replace function relay._record(
    p_kind "char", p_schema text, p_table text, p_topic text, p_event text,
    p_user text, p_org text, p_old_user text, p_old_org text,
    p_new jsonb, p_old jsonb
) returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_batch bigint;
    v_ord integer;
begin
    v_batch := nullif(current_setting('relay.batch', true), '')::bigint;
    if v_batch is null then
        v_batch := nextval('relay.batch_seq');
        v_ord := 1;
        perform set_config('relay.batch', v_batch::text, true);
    else
        v_ord := current_setting('relay.ord')::integer + 1;
    end if;
    perform set_config('relay.ord', v_ord::text, true);
    insert into relay.changes (batch, ord, kind, schema_name, table_name, topic, event,
                               user_id, org_id, old_user_id, old_org_id, new, old)
    values (v_batch, v_ord, p_kind, p_schema, p_table, p_topic, p_event,
            p_user, p_org, p_old_user, p_old_org, p_new, p_old);
    return v_ord;
end;
$$;

-- Fires at COMMIT (deferred) once per batch: positions in commit order.
create or replace function relay._seal() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
    v_base bigint;
begin
    v_count := current_setting('relay.ord')::integer;
    -- changes recorded after this point (by other deferred triggers) start a new batch
    perform set_config('relay.batch', '', true);
    perform pg_advisory_xact_lock(7265636, 1);  -- 'rel' / 1: position drawing
    v_base := nextval('relay.position_seq');
    if v_count > 1 then
        perform setval('relay.position_seq', v_base + v_count - 1, true);
    end if;
    insert into relay.batches (id, base, last_pos, committed_at)
    values (new.batch, v_base, v_base + v_count - 1, clock_timestamp());
    perform pg_notify('relay', '');
    return null;
end;
$$;

drop trigger if exists relay_seal on relay.changes;
create constraint trigger relay_seal
    after insert on relay.changes
    deferrable initially deferred
    for each row when (new.ord = 1) execute function relay._seal();

-- Row capture. TG_ARGV: user column, org column, excluded columns (text[]
-- literal), and, when old row versions are not kept, the primary key columns
-- (text[] literal): UPDATE/DELETE then log only the key in `old` (the owner of
-- the old version is still recorded, so visibility is unchanged).
create or replace function relay._capture() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_user_col text := nullif(tg_argv[0], '');
    v_org_col text := nullif(tg_argv[1], '');
    v_exclude text[] := tg_argv[2]::text[];
    v_key_only text[] := case when tg_nargs > 3 then tg_argv[3]::text[] end;
    v_new jsonb;
    v_old jsonb;
    v_old_logged jsonb;
begin
    if tg_op <> 'DELETE' then
        v_new := to_jsonb(new) - v_exclude;
    end if;
    if tg_op <> 'INSERT' then
        v_old := to_jsonb(old) - v_exclude;
        v_old_logged := case when v_key_only is null then v_old
                             else (select jsonb_object_agg(k, v) from jsonb_each(v_old) e(k, v)
                                    where k = any (v_key_only)) end;
    end if;
    if tg_op = 'INSERT' then
        perform relay._record('I', tg_table_schema, tg_table_name, null, null,
            v_new ->> v_user_col, v_new ->> v_org_col, null, null, v_new, null);
    elsif tg_op = 'UPDATE' then
        perform relay._record('U', tg_table_schema, tg_table_name, null, null,
            v_new ->> v_user_col, v_new ->> v_org_col,
            v_old ->> v_user_col, v_old ->> v_org_col, v_new, v_old_logged);
    else
        perform relay._record('D', tg_table_schema, tg_table_name, null, null,
            v_old ->> v_user_col, v_old ->> v_org_col, null, null, null, v_old_logged);
    end if;
    return null;
end;
$$;

create or replace function relay._capture_truncate() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform relay._record('T', tg_table_schema, tg_table_name, null, null,
        null, null, null, null, null, null);
    return null;
end;
$$;

create or replace function relay._drop_triggers(tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_name text;
begin
    for v_name in select tgname from pg_trigger
                   where tgrelid = tbl and tgname in ('relay_capture', 'relay_capture_truncate') loop
        execute format('drop trigger %I on %s', v_name, tbl);
    end loop;
end;
$$;

create or replace function relay.watch(
    tbl regclass,
    user_column text default null,
    org_column text default null,
    exclude text[] default '{}',
    keep_old boolean default true
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_schema text;
    v_table text;
    v_pk text[];
    v_cols text[];
    v_user text := user_column;
    v_org text := org_column;
    v_col text;
begin
    select n.nspname, c.relname into v_schema, v_table
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = tbl and c.relkind in ('r', 'p');
    if v_table is null then
        raise exception 'relay.watch: % is not a table', tbl using errcode = '42809';
    end if;
    if v_schema = 'relay' then
        raise exception 'relay.watch: tables of schema relay cannot be watched'
            using errcode = '42809';
    end if;

    select array_agg(a.attname::text order by array_position(i.indkey::int2[], a.attnum))
      into v_pk
      from pg_index i
      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])
     where i.indrelid = tbl and i.indisprimary;
    if v_pk is null then
        raise exception 'relay.watch: table % has no primary key', tbl
            using errcode = '42P10',
                  hint = 'Add one: ALTER TABLE ... ADD PRIMARY KEY (...)';
    end if;

    select array_agg(a.attname::text) into v_cols
      from pg_attribute a
     where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped;

    if v_user is null and 'user_id' = any (v_cols) then
        v_user := 'user_id';
    end if;
    if v_org is null and 'org_id' = any (v_cols) then
        v_org := 'org_id';
    end if;
    foreach v_col in array array_remove(array[user_column, org_column], null) || coalesce(exclude, '{}') loop
        if not v_col = any (v_cols) then
            raise exception 'relay.watch: table % has no column "%"', tbl, v_col
                using errcode = '42703';
        end if;
    end loop;
    if v_pk && coalesce(exclude, '{}') then
        raise exception 'relay.watch: primary key columns of % cannot be excluded', tbl
            using errcode = '22023';
    end if;
    if array[v_user, v_org] && coalesce(exclude, '{}') then
        raise exception 'relay.watch: ownership columns of % cannot be excluded', tbl
            using errcode = '22023';
    end if;

    perform relay._drop_triggers(tbl);
    if coalesce(keep_old, true) then
        execute format(
            'create trigger relay_capture after insert or update or delete on %s '
            'for each row execute function relay._capture(%L, %L, %L)',
            tbl, coalesce(v_user, ''), coalesce(v_org, ''), coalesce(exclude, '{}')::text);
    else
        execute format(
            'create trigger relay_capture after insert or update or delete on %s '
            'for each row execute function relay._capture(%L, %L, %L, %L)',
            tbl, coalesce(v_user, ''), coalesce(v_org, ''), coalesce(exclude, '{}')::text,
            v_pk::text);
    end if;
    execute format(
        'create trigger relay_capture_truncate after truncate on %s '
        'for each statement execute function relay._capture_truncate()', tbl);

    insert into relay.watched (relid, schema_name, table_name, user_column, org_column,
                               pk_columns, exclude_columns, keep_old)
    values (tbl, v_schema, v_table, v_user, v_org, v_pk, coalesce(exclude, '{}'),
            coalesce(keep_old, true))
    on conflict (relid) do update
       set schema_name = excluded.schema_name, table_name = excluded.table_name,
           user_column = excluded.user_column, org_column = excluded.org_column,
           pk_columns = excluded.pk_columns, exclude_columns = excluded.exclude_columns,
           keep_old = excluded.keep_old, watched_at = now();
    perform pg_notify('relay_catalog', '');
end;
$$;

create or replace function relay.unwatch(tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform relay._drop_triggers(tbl);
    delete from relay.watched where relid = tbl;
    perform pg_notify('relay_catalog', '');
end;
$$;

create or replace function relay.broadcast(
    topic text, event text, payload jsonb,
    org_id text default null, user_id text default null
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if topic is null or topic = '' then
        raise exception 'relay.broadcast: topic must not be empty' using errcode = '22023';
    end if;
    if event is null or event = '' then
        raise exception 'relay.broadcast: event must not be empty' using errcode = '22023';
    end if;
    perform relay._record('B', null, null, topic, event, user_id, org_id, null, null,
                          coalesce(payload, '{}'::jsonb), null);
end;
$$;

create or replace function relay.current_position() returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select greatest(coalesce(max(last_pos), 0), (select pruned_through from relay.meta))
      from relay.batches
$$;

-- Retention: delete the oldest committed batches (at most max_batches per
-- call, so no long locks) that are older than max_age or beyond the newest
-- keep_count positions. One pruner at a time (advisory lock); returns the
-- number of batches removed (0 when another pruner holds the lock).
-- relay.meta.pruned_through is raised in the same transaction: a resume from
-- below it gets RESYNC_REQUIRED instead of a silent gap.
create or replace function relay.prune(
    max_age interval default '24 hours',
    keep_count bigint default null,
    max_batches integer default 5000
) returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_ids bigint[];
    v_last bigint;
    v_head bigint;
begin
    if not pg_try_advisory_xact_lock(7265636, 2) then
        return 0;
    end if;
    select max(last_pos) into v_head from relay.batches;
    -- committed_at grows with last_pos (commit order), so the oldest batches are
    -- the first ones by last_pos: walk that index and stop at the first one kept.
    select array_agg(id), max(last_pos) into v_ids, v_last
      from (select id, last_pos,
                   bool_and(committed_at < now() - max_age
                            or (keep_count is not null and last_pos <= v_head - keep_count))
                       over (order by last_pos) as all_old
              from (select id, last_pos, committed_at from relay.batches
                     order by last_pos limit max_batches) oldest) s
     where all_old;
    if v_ids is null then
        return 0;
    end if;
    update relay.meta set pruned_through = greatest(pruned_through, v_last);
    delete from relay.changes where batch = any (v_ids);
    delete from relay.batches where id = any (v_ids);
    return array_length(v_ids, 1);
end;
$$;

-- Topic authorization. The default relay.can_subscribe allows service_role,
-- and otherwise only topics of a registered family `family:{id}` whose row
-- {id} (primary key) of the mapped watched table the claims own. The
-- application may replace relay.can_subscribe with CREATE OR REPLACE.
-- `claims` is the token's claims with `org_ids` normalized to a list.
create table if not exists relay.topic_families (
    family text primary key check (family <> '' and position(':' in family) = 0),
    relid oid not null
);

create or replace function relay.register_topic_family(family text, tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from relay.watched w where w.relid = tbl) then
        raise exception 'relay.register_topic_family: % is not watched (call relay.watch first)', tbl
            using errcode = '22023';
    end if;
    insert into relay.topic_families (family, relid) values (family, tbl)
    on conflict on constraint topic_families_pkey do update set relid = excluded.relid;
end;
$$;

create or replace function relay.can_subscribe(topic text, claims jsonb) returns boolean
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_family text;
    v_id text;
    v_w relay.watched;
    v_orgs text[];
    v_ok boolean;
begin
    if claims ->> 'role' = 'service_role' then
        return true;
    end if;
    if position(':' in topic) = 0 then
        return false;
    end if;
    v_family := split_part(topic, ':', 1);
    v_id := substr(topic, length(v_family) + 2);
    select w.* into v_w
      from relay.topic_families f join relay.watched w on w.relid = f.relid
     where f.family = v_family;
    if not found or v_id = '' or array_length(v_w.pk_columns, 1) <> 1 then
        return false;
    end if;
    select coalesce(array_agg(x), '{}') into v_orgs
      from jsonb_array_elements_text(
             case when jsonb_typeof(claims -> 'org_ids') = 'array' then claims -> 'org_ids'
                  else '[]'::jsonb end) as x;
    execute format(
        'select exists (select 1 from %I.%I t where t.%I::text = $1 and (%s or %s))',
        v_w.schema_name, v_w.table_name, v_w.pk_columns[1],
        case when v_w.user_column is null then 'false'
             else format('t.%I::text = $2', v_w.user_column) end,
        case when v_w.org_column is null then 'false'
             else format('t.%I::text = any ($3)', v_w.org_column) end)
      into v_ok
      using v_id, claims ->> 'sub', v_orgs;
    return coalesce(v_ok, false);
exception
    when invalid_text_representation or undefined_column or undefined_table then
        return false;
end;
$$;

-- Dropping a watched table unwatches it.
create or replace function relay._on_drop() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_obj record;
    v_any boolean := false;
begin
    for v_obj in select * from pg_event_trigger_dropped_objects() where object_type = 'table' loop
        delete from relay.watched where relid = v_obj.objid;
        v_any := v_any or found;
    end loop;
    if v_any then
        perform pg_notify('relay_catalog', '');
    end if;
end;
$$;

-- ALTER TABLE on a watched table: keep its recorded name current (RENAME) and
-- tell the relays to re-read the catalog, so a subscription whose filter or
-- select names a column that is gone is told instead of going silent.
create or replace function relay._on_ddl() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_any boolean := false;
begin
    update relay.watched w
       set schema_name = n.nspname, table_name = c.relname
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = w.relid
       and w.relid in (select objid from pg_event_trigger_ddl_commands())
       and (w.schema_name, w.table_name) is distinct from (n.nspname::text, c.relname::text);
    select exists (select 1 from pg_event_trigger_ddl_commands() d
                     join relay.watched w on w.relid = d.objid) into v_any;
    if v_any then
        perform pg_notify('relay_catalog', '');
    end if;
end;
$$;

-- Event triggers need a superuser; a non-superuser owner migrates without them
-- (dropping a watched table then leaves a stale row that `relay status` shows,
-- and `relay migrate` removes).
do $$
begin
    if (select rolsuper from pg_roles where rolname = current_user) then
        drop event trigger if exists relay_on_drop;
        create event trigger relay_on_drop on sql_drop execute function relay._on_drop();
        drop event trigger if exists relay_on_ddl;
        create event trigger relay_on_ddl on ddl_command_end when tag in ('ALTER TABLE')
            execute function relay._on_ddl();
    end if;
end;
$$;

-- Re-install capture where it is missing (run by every `relay migrate`):
-- repairs a trigger dropped by hand, forgets tables that no longer exist.
-- Returns the number of tables repaired.
create or replace function relay.repair() returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_w relay.watched;
    v_n integer := 0;
begin
    delete from relay.watched w where not exists (select 1 from pg_class c where c.oid = w.relid);
    for v_w in select * from relay.watched loop
        -- only tables whose capture triggers are gone: re-creating a trigger takes
        -- an exclusive lock on the table, which a healthy table need not pay
        continue when (select count(*) from pg_trigger where tgrelid = v_w.relid
                        and tgname in ('relay_capture', 'relay_capture_truncate')) = 2;
        perform relay.watch(v_w.relid::regclass, v_w.user_column, v_w.org_column,
                            v_w.exclude_columns, v_w.keep_old);
        v_n := v_n + 1;
    end loop;
    return v_n;
end;
$$;

revoke all on all tables in schema relay from public;
revoke all on all sequences in schema relay from public;
revoke all on all functions in schema relay from public;
grant usage on schema relay to public;
grant execute on function relay.broadcast(text, text, jsonb, text, text) to public;
grant execute on function relay.current_position() to public;

-- relay_reader: what a relay process needs, and nothing more. Grant it to the
-- role the relay logs in as: GRANT relay_reader TO relay_app; (made when the
-- migrating role may create roles; otherwise the README shows the GRANTs).
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'relay_reader')
       and (select rolsuper or rolcreaterole from pg_roles where rolname = current_user) then
        create role relay_reader nologin;
    end if;
    if exists (select 1 from pg_roles where rolname = 'relay_reader') then
        grant usage on schema relay to relay_reader;
        grant select on relay.changes, relay.batches, relay.meta, relay.watched to relay_reader;
        grant execute on function relay.current_position(), relay.can_subscribe(text, jsonb),
            relay.prune(interval, bigint, integer),
            relay.broadcast(text, text, jsonb, text, text) to relay_reader;
    end if;
end;
$$;
