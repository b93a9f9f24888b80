-- relay 002: capture that no database role can subvert, positions without a lock.
--
-- Why (see docs/architecture.md, "Positions"): 001 kept its per-transaction
-- state in settings (relay.batch, relay.ord) that any role may set, drew
-- positions under an advisory lock that any role may hold, and ran to_jsonb()
-- as the schema's owner, which runs a cast to json owned by whoever owns a
-- column's type. 002 keeps no state a role can touch and takes no lock:
--
--   * Capture is statement-level (transition tables). The rows of one
--     statement enter relay.changes in one INSERT ... SELECT. A change is
--     keyed (batch, ord): `batch` derives from the transaction's own xid
--     (2^62 + xid * 2^16 + generation), `ord` counts the transaction's changes
--     (1, 2, 3 ...), read back from the transaction's own rows. A batch holds at
--     most 16384 changes (the block size); a bigger transaction fills several
--     batches, in order.
--   * The first change of a batch queues a deferred constraint trigger that
--     fires at COMMIT ("seal"): it draws n = nextval(relay.seal_seq) and
--     records the batch in relay.batches with base = n * 16384, so the batch's
--     changes have positions base .. base + count - 1 (one block each; no two
--     batches share a block). Drawing at commit time respects every order a
--     client can observe: a writer that waits on another's row lock, reads its
--     committed rows or starts after its commit draws after it.
--   * Without a lock two transactions may commit in the other order than they
--     drew: n = 10 may still be in flight when n = 11 is visible. Readers never
--     publish past such a hole: relay.settle() finds the blocks drawn but not
--     visible and claims each one with an empty "tombstone" batch in its own
--     transaction. The claim is an INSERT on the unique index over base, so it
--     waits exactly for a writer that is inserting that block (a commit in
--     progress), and succeeds at once for a block whose writer rolled back. A
--     writer that finds its block claimed draws again (later). Transactions
--     that are merely open (psql sitting in BEGIN) have drawn nothing: they
--     never hold a reader back.
--   * Casts: the capture runs to_jsonb() only on rows whose column types are all
--     built in (domains over built-in types included); a column of a
--     user-defined type is converted by its output function (format('%s')),
--     which no role but a superuser can define, never through a cast.
--   * Excluded columns are kept by attribute number, so a rename keeps them
--     out; re-watching with a new exclusion also removes those values from the
--     changes already logged.

-- Lock order: writers lock their table, then relay.changes, then (at COMMIT)
-- relay.batches. Taking the watched tables first, before any relay table,
-- keeps this migration from deadlocking with writers committing meanwhile.
do $$
declare
    v_relid oid;
begin
    for v_relid in select w.relid from relay.watched w
                    where exists (select 1 from pg_class c where c.oid = w.relid)
                    order by w.relid loop
        execute format('lock table %s in share row exclusive mode', v_relid::regclass);
    end loop;
end;
$$;

create sequence if not exists relay.seal_seq as bigint minvalue 0;

-- Blocks start above every position 001 handed out.
select setval('relay.seal_seq',
              greatest(coalesce((select max(last_pos) from relay.batches), 0),
                       (select pruned_through from relay.meta),
                       (select last_value from relay.position_seq)) / 16384 + 1,
              true);

-- Claims (tombstones) and seals meet on base; last_pos is no longer unique
-- (a tombstone is empty: last_pos = base - 1).
create unique index if not exists batches_base on relay.batches (base);
create index if not exists batches_last_pos_order on relay.batches (last_pos);
drop index if exists relay.batches_last_pos;

-- The block below which every block is settled (committed, or claimed empty):
-- where relay.current_position() starts its walk. Advanced by relay.settle().
create table if not exists relay.settled (
    singleton boolean primary key default true check (singleton),
    block bigint not null,
    at timestamptz not null default now()
);
insert into relay.settled (singleton, block)
select true, last_value from relay.seal_seq
on conflict do nothing;

alter table relay.watched add column if not exists exclude_attnums int2[] not null default '{}';
update relay.watched w
   set exclude_attnums = coalesce((select array_agg(a.attnum order by a.attnum)
                                     from pg_attribute a
                                    where a.attrelid = w.relid
                                      and a.attname = any (w.exclude_columns)), '{}');

alter table relay.meta add column if not exists broadcast_max_bytes integer not null default 262144;

-- 001's functions that kept state in settings or took the advisory lock.
drop function if exists relay._record("char", text, text, text, text, text, text, text, text,
                                      jsonb, jsonb);

-- The (batch, ord) the current transaction's next change takes. The batch
-- id is derived from the transaction's own xid (nothing another session or a
-- setting can influence); a batch already sealed (a deferred trigger wrote
-- after COMMIT began) or full moves on to the next generation.
create or replace function relay._slot(out batch bigint, out ord integer)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_first bigint := 4611686018427387904 + (pg_current_xact_id()::text::bigint) * 65536;
begin
    select c.batch, c.ord into batch, ord
      from relay.changes c
     where c.batch between v_first and v_first + 65535
     order by c.batch desc, c.ord desc
     limit 1;
    if batch is null then
        batch := v_first;
        ord := 0;
    elsif ord >= 16384 or exists (select 1 from relay.batches b where b.id = batch) then
        batch := batch + 1;
        ord := 0;
    end if;
end;
$$;

-- The JSON of one row set, without running code that another role owns:
-- to_jsonb() for built-in column types, the type's output function for the
-- others. Returns a SELECT list expression over alias `r` (the row).
create or replace function relay._row_json_sql(p_relid oid, p_exclude int2[]) returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    with recursive base(attnum, name, oid) as (
        select a.attnum, a.attname::text, a.atttypid
          from pg_attribute a
         where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped
           and not a.attnum = any (p_exclude)
        union all  -- a domain's base type, down to a type that is not a domain
        select b.attnum, b.name, t.typbasetype
          from base b join pg_type t on t.oid = b.oid
         where t.typtype = 'd'),
    cols as (
        select b.attnum, b.name, b.oid, t.typelem
          from base b join pg_type t on t.oid = b.oid
         where t.typtype <> 'd'),
    exprs as (
        select attnum,
               format('%L, %s', name,
                   case
                       when oid < 16384 then format('r.%I', name)
                       when typelem <> 0 then
                           format('case when r.%1$I is null then null else coalesce('
                                  '(select pg_catalog.jsonb_agg(pg_catalog.format(''%%s'', e)) '
                                  'from pg_catalog.unnest(r.%1$I) e), ''[]''::jsonb) end', name)
                       else format('pg_catalog.format(''%%s'', r.%I)', name)
                   end) as pair,
               (row_number() over (order by attnum) - 1) / 40 as chunk
          from cols)
    select coalesce(string_agg(obj, ' || ' order by chunk), '''{}''::jsonb')
      from (select chunk,
                   'pg_catalog.jsonb_build_object(' || string_agg(pair, ', ' order by attnum)
                   || ')' as obj
              from exprs group by chunk) x
$$;

-- Statement-level capture of INSERT, UPDATE and DELETE (one trigger each:
-- transition tables allow one event per trigger). A table with a column of a
-- user-defined type (an enum, a domain, an extension's type) takes the
-- dynamic path: the row's JSON is built column by column, never through a
-- cast (relay._row_json_sql); that costs a plan per statement.
create or replace function relay._capture() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_w relay.watched;
    v_excl text[];
    v_builtin boolean;
    v_first bigint;
    v_batch bigint;
    v_ord integer;
    v_new text;
    v_old text;
    v_sql text;
begin
    select * into v_w from relay.watched where relid = tg_relid;
    if not found then
        return null;
    end if;
    v_excl := '{}';
    if v_w.exclude_attnums <> '{}' then
        select coalesce(array_agg(a.attname::text), '{}') into v_excl
          from pg_attribute a
         where a.attrelid = tg_relid and a.attnum = any (v_w.exclude_attnums);
    end if;
    -- only built-in column types: to_jsonb() runs no code that a role owns
    v_builtin := not exists (select 1 from pg_attribute a
                              where a.attrelid = tg_relid and a.attnum > 0
                                and a.atttypid >= 16384 and not a.attisdropped);
    -- the transaction's batch and last ord so far (as relay._slot, inlined)
    v_first := 4611686018427387904 + (pg_current_xact_id()::text::bigint) * 65536;
    select c.batch, c.ord into v_batch, v_ord
      from relay.changes c
     where c.batch between v_first and v_first + 65535
     order by c.batch desc, c.ord desc
     limit 1;
    if v_batch is null then
        v_batch := v_first;
        v_ord := 0;
    elsif v_ord >= 16384 or exists (select 1 from relay.batches b where b.id = v_batch) then
        v_batch := v_batch + 1;
        v_ord := 0;
    end if;

    if v_builtin then
        if tg_op = 'INSERT' then
            insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, org_id, new)
            select v_batch + (v_ord + x.rn - 1) / 16384, (v_ord + x.rn - 1) % 16384 + 1, 'I',
                   tg_table_schema, tg_table_name,
                   x.j ->> v_w.user_column, x.j ->> v_w.org_column, x.j
              from (select row_number() over () as rn, to_jsonb(r) - v_excl as j
                      from new_rows r) x;
        elsif tg_op = 'UPDATE' then
            insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, org_id,
                                       old_user_id, old_org_id, new, old)
            select v_batch + (v_ord + n.rn - 1) / 16384, (v_ord + n.rn - 1) % 16384 + 1, 'U',
                   tg_table_schema, tg_table_name,
                   n.j ->> v_w.user_column, n.j ->> v_w.org_column,
                   o.j ->> v_w.user_column, o.j ->> v_w.org_column, n.j,
                   case when v_w.keep_old then o.j
                        else (select jsonb_object_agg(k, v) from jsonb_each(o.j) e(k, v)
                               where k = any (v_w.pk_columns)) end
              from (select row_number() over () as rn, to_jsonb(r) - v_excl as j
                      from new_rows r) n
              join (select row_number() over () as rn, to_jsonb(r) - v_excl as j
                      from old_rows r) o on o.rn = n.rn;
        else
            insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, org_id, old)
            select v_batch + (v_ord + o.rn - 1) / 16384, (v_ord + o.rn - 1) % 16384 + 1, 'D',
                   tg_table_schema, tg_table_name,
                   o.j ->> v_w.user_column, o.j ->> v_w.org_column,
                   case when v_w.keep_old then o.j
                        else (select jsonb_object_agg(k, v) from jsonb_each(o.j) e(k, v)
                               where k = any (v_w.pk_columns)) end
              from (select row_number() over () as rn, to_jsonb(r) - v_excl as j
                      from old_rows r) o;
        end if;
        return null;
    end if;

    -- A column of a user-defined type: the same statements, with the row's
    -- JSON built column by column (relay._row_json_sql), as dynamic SQL.
    v_sql := relay._row_json_sql(tg_relid, v_w.exclude_attnums);
    v_new := format('(select row_number() over () as rn, %s as j from new_rows r)', v_sql);
    v_old := format('(select row_number() over () as rn, %s as j from old_rows r)', v_sql);
    if tg_op = 'INSERT' then
        execute format(
            'insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, '
            'org_id, new) select $1 + ($2 + x.rn - 1) / 16384, ($2 + x.rn - 1) %% 16384 + 1, '
            '''I'', $3, $4, x.j ->> $5, x.j ->> $6, x.j from %s x', v_new)
        using v_batch, v_ord, tg_table_schema, tg_table_name, v_w.user_column, v_w.org_column;
    elsif tg_op = 'UPDATE' then
        execute format(
            'insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, '
            'org_id, old_user_id, old_org_id, new, old) '
            'select $1 + ($2 + n.rn - 1) / 16384, ($2 + n.rn - 1) %% 16384 + 1, ''U'', $3, $4, '
            'n.j ->> $5, n.j ->> $6, o.j ->> $5, o.j ->> $6, n.j, '
            'case when $7 then o.j else (select pg_catalog.jsonb_object_agg(k, v) '
            'from pg_catalog.jsonb_each(o.j) e(k, v) where k = any ($8)) end '
            'from %s n join %s o on o.rn = n.rn', v_new, v_old)
        using v_batch, v_ord, tg_table_schema, tg_table_name, v_w.user_column, v_w.org_column,
              v_w.keep_old, v_w.pk_columns;
    else
        execute format(
            'insert into relay.changes (batch, ord, kind, schema_name, table_name, user_id, '
            'org_id, old) select $1 + ($2 + o.rn - 1) / 16384, ($2 + o.rn - 1) %% 16384 + 1, '
            '''D'', $3, $4, o.j ->> $5, o.j ->> $6, '
            'case when $7 then o.j else (select pg_catalog.jsonb_object_agg(k, v) '
            'from pg_catalog.jsonb_each(o.j) e(k, v) where k = any ($8)) end from %s o', v_old)
        using v_batch, v_ord, tg_table_schema, tg_table_name, v_w.user_column, v_w.org_column,
              v_w.keep_old, v_w.pk_columns;
    end if;
    return null;
end;
$$;

create or replace function relay._capture_truncate() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_batch bigint;
    v_ord integer;
begin
    select s.batch, s.ord into v_batch, v_ord from relay._slot() s;
    insert into relay.changes (batch, ord, kind, schema_name, table_name)
    values (v_batch, v_ord + 1, 'T', tg_table_schema, tg_table_name);
    return null;
end;
$$;

-- Fires at COMMIT (deferred) once per batch: draw a block, record the batch.
create or replace function relay._seal() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
    v_block bigint;
begin
    select max(c.ord) into v_count from relay.changes c where c.batch = new.batch;
    if v_count is null then
        return null;
    end if;
    loop
        v_block := nextval('relay.seal_seq');
        insert into relay.batches (id, base, last_pos, committed_at)
        values (new.batch, v_block * 16384, v_block * 16384 + v_count - 1, clock_timestamp())
        on conflict (base) do nothing;
        exit when found;  -- else a reader claimed this block as abandoned: draw again
    end loop;
    perform pg_notify('relay', '');
    return null;
end;
$$;

-- Claim `block` for a reader: returns once the block is settled. If a writer
-- holds it (its seal inserted the block and is committing), this waits for
-- that commit; otherwise the block was abandoned (rolled back after drawing)
-- and becomes an empty batch. Each call must be its own transaction.
create or replace function relay._claim(block bigint) returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    insert into relay.batches (id, base, last_pos, committed_at)
    values (-block, block * 16384, block * 16384 - 1, clock_timestamp())
    on conflict (base) do nothing
$$;

-- The settled head seen from the caller's snapshot: `position` is the highest
-- P such that every position <= P is visible or will never be used; `exact`
-- says no change above P is visible either (the snapshot is a prefix of the
-- log). Walks the blocks from relay.settled, which relays keep recent.
create or replace function relay.snapshot_head(out "position" bigint, out exact boolean)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_block bigint;
    v_base bigint;
begin
    select greatest(s.block, (select m.pruned_through from relay.meta m) / 16384)
      into v_block from relay.settled s;
    exact := true;
    for v_base in select b.base from relay.batches b where b.base > v_block * 16384
                   order by b.base loop
        if v_base <> (v_block + 1) * 16384 then
            exact := false;
            exit;
        end if;
        v_block := v_block + 1;
    end loop;
    "position" := (v_block + 1) * 16384 - 1;
end;
$$;

create or replace function relay.current_position() returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select "position" from relay.snapshot_head()
$$;

-- The blocks a reader at `from_block` must settle: `upto` is the last block
-- drawn so far (at most `max_blocks` ahead), `holes` those of
-- (from_block, upto] that are not visible yet (in flight, or abandoned).
create or replace function relay._holes(
    from_block bigint, max_blocks integer, out upto bigint, out holes bigint[])
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_from bigint;
begin
    select greatest(from_block, s.block) into v_from from relay.settled s;
    select case when q.is_called then q.last_value else q.last_value - 1 end into upto
      from relay.seal_seq q;
    upto := greatest(least(upto, v_from + max_blocks), v_from);
    select coalesce(array_agg(g order by g), '{}') into holes
      from generate_series(v_from + 1, upto) g
     where not exists (select 1 from relay.batches b where b.base = g * 16384);
end;
$$;

-- Record that every block <= `block` is settled (relay.current_position()
-- walks from there); at most one write a second.
create or replace function relay._mark_settled(block bigint) returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    update relay.settled s set block = _mark_settled.block, at = now()
     where s.block < _mark_settled.block and s.at < now() - interval '1 second'
$$;

-- Settle every block drawn so far (for psql and the CLI; the relay does the
-- same from its listener): claims each hole in its own transaction, so a
-- claim is never held while waiting on a writer. `head` returns the settled
-- head: every position <= it is committed and visible, or never to be used.
-- Call it outside a transaction block: CALL relay.settle(); (it has no SET
-- search_path: a procedure with a SET clause cannot COMMIT, so it qualifies
-- every name, and only the relay's roles may execute it)
create or replace procedure relay.settle(inout head bigint default null)
language plpgsql
as $$
declare
    v_upto bigint;
    v_holes bigint[];
    v_hole bigint;
begin
    loop
        select h.upto, h.holes into v_upto, v_holes
          from relay._holes(pg_catalog.int8div(coalesce(head, 0), 16384), 100000) h;
        commit;
        foreach v_hole in array v_holes loop
            perform relay._claim(v_hole);
            commit;
        end loop;
        perform relay._mark_settled(v_upto);
        head := (v_upto + 1) * 16384 - 1;
        exit when pg_catalog.cardinality(v_holes) = 0
              or v_upto = (select case when q.is_called then q.last_value else q.last_value - 1 end
                             from relay.seal_seq q);
    end loop;
end;
$$;

create or replace function relay._watch_triggers(tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform relay._drop_triggers(tbl);
    execute format(
        'create trigger relay_capture_insert after insert on %s referencing new table as new_rows '
        'for each statement execute function relay._capture()', tbl);
    execute format(
        'create trigger relay_capture_update after update on %s '
        'referencing old table as old_rows new table as new_rows '
        'for each statement execute function relay._capture()', tbl);
    execute format(
        'create trigger relay_capture_delete after delete on %s referencing old table as old_rows '
        'for each statement execute function relay._capture()', tbl);
    execute format(
        'create trigger relay_capture_truncate after truncate on %s '
        'for each statement execute function relay._capture_truncate()', tbl);
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
                   where tgrelid = tbl
                     and tgname in ('relay_capture', 'relay_capture_truncate', 'relay_capture_insert',
                                    'relay_capture_update', 'relay_capture_delete') loop
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
    v_exclude text[] := coalesce(exclude, '{}');
    v_attnums int2[];
    v_before text[];
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
    foreach v_col in array array_remove(array[user_column, org_column], null) || v_exclude loop
        if not v_col = any (v_cols) then
            raise exception 'relay.watch: table % has no column "%"', tbl, v_col
                using errcode = '42703';
        end if;
    end loop;
    if v_pk && v_exclude then
        raise exception 'relay.watch: primary key columns of % cannot be excluded', tbl
            using errcode = '22023';
    end if;
    if array[v_user, v_org] && v_exclude then
        raise exception 'relay.watch: ownership columns of % cannot be excluded', tbl
            using errcode = '22023';
    end if;
    select coalesce(array_agg(a.attnum order by a.attnum), '{}') into v_attnums
      from pg_attribute a
     where a.attrelid = tbl and a.attname = any (v_exclude) and not a.attisdropped;

    perform relay._watch_triggers(tbl);

    select w.exclude_columns into v_before from relay.watched w where w.relid = tbl;
    insert into relay.watched (relid, schema_name, table_name, user_column, org_column,
                               pk_columns, exclude_columns, exclude_attnums, keep_old)
    values (tbl, v_schema, v_table, v_user, v_org, v_pk, v_exclude, v_attnums,
            coalesce(keep_old, true))
    on conflict (relid) do update
       set schema_name = excluded.schema_name, table_name = excluded.table_name,
           user_column = excluded.user_column, org_column = excluded.org_column,
           pk_columns = excluded.pk_columns, exclude_columns = excluded.exclude_columns,
           exclude_attnums = excluded.exclude_attnums,
           keep_old = excluded.keep_old, watched_at = now();
    -- a column newly excluded: its values already in the log go too
    if not v_exclude <@ coalesce(v_before, '{}') then
        update relay.changes c
           set new = c.new - v_exclude, old = c.old - v_exclude
         where c.schema_name = v_schema and c.table_name = v_table and c.kind in ('I', 'U', 'D')
           and (c.new ?| v_exclude or c.old ?| v_exclude);
    end if;
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
    perform relay._broadcast(topic, event, payload, org_id, user_id);
end;
$$;

-- relay.broadcast, returning the message's (batch, ord): its position is
-- known once the transaction committed (relay.batches.base + ord - 1).
create or replace function relay._broadcast(
    topic text, event text, payload jsonb, org_id text, user_id text,
    out batch bigint, out ord integer)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_cap integer;
    v_size integer;
begin
    if topic is null or topic = '' then
        raise exception 'relay.broadcast: topic must not be empty' using errcode = '22023';
    end if;
    if event is null or event = '' then
        raise exception 'relay.broadcast: event must not be empty' using errcode = '22023';
    end if;
    select m.broadcast_max_bytes into v_cap from relay.meta m;
    v_size := octet_length(coalesce(payload, '{}'::jsonb)::text) + octet_length(topic)
              + octet_length(event);
    if v_size > v_cap then
        raise exception 'relay.broadcast: message of % bytes is over the cap of % bytes', v_size, v_cap
            using errcode = '54000',
                  hint = 'Send a reference (an id) and let clients fetch the data, or raise '
                         'relay.meta.broadcast_max_bytes.';
    end if;
    select s.batch, s.ord + 1 into batch, ord from relay._slot() s;
    insert into relay.changes (batch, ord, kind, topic, event, user_id, org_id, new)
    values (batch, ord, 'B', topic, event, user_id, org_id, coalesce(payload, '{}'::jsonb));
end;
$$;

-- Retention, as in 001, but never past the settled head seen from this
-- snapshot: a block still being committed below it must not be declared pruned.
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
    v_old_upto bigint;  -- keep_count: the newest batch that it does not keep
    v_settled bigint;
begin
    perform 1 from relay.meta for update skip locked;
    if not found then
        return 0;  -- another pruner is at work
    end if;
    select h."position" into v_settled from relay.snapshot_head() h;
    if keep_count is not null then
        -- walk down from the newest until keep_count changes are counted
        select n.base into v_old_upto
          from (select base, sum(greatest(last_pos - base + 1, 0)) over (order by base desc)
                             - greatest(last_pos - base + 1, 0) as newer
                  from relay.batches where base <= v_settled) n
         where n.newer >= keep_count
         order by n.base desc limit 1;
    end if;
    -- a batch of 002 (id >= 2^62) or a claimed block (id < 0) owns its whole
    -- block: once it is gone, so is every position of the block
    select array_agg(id),
           max(case when id >= 4611686018427387904 or id < 0 then (base / 16384 + 1) * 16384 - 1
                    else last_pos end)
      into v_ids, v_last
      from (select id, last_pos, base,
                   bool_and(committed_at < now() - max_age
                            or base <= v_old_upto)
                       over (order by base) as all_old
              from (select id, last_pos, base, committed_at from relay.batches
                     where base <= v_settled
                     order by base limit max_batches) oldest) s
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

-- ALTER TABLE on a watched table: keep its recorded name and the names of
-- its excluded columns current (they are kept by attribute number).
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
    update relay.watched w
       set exclude_columns = coalesce((select array_agg(a.attname::text order by a.attnum)
                                         from pg_attribute a
                                        where a.attrelid = w.relid
                                          and a.attnum = any (w.exclude_attnums)
                                          and not a.attisdropped), '{}')
     where w.relid in (select objid from pg_event_trigger_ddl_commands());
    select exists (select 1 from pg_event_trigger_ddl_commands() d
                     join relay.watched w on w.relid = d.objid) into v_any;
    if v_any then
        perform pg_notify('relay_catalog', '');
    end if;
end;
$$;

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
        -- only tables whose capture triggers are missing or from 001: re-creating
        -- a trigger takes a lock on the table, which a healthy table need not pay
        continue when (select count(*) from pg_trigger where tgrelid = v_w.relid
                        and tgname in ('relay_capture_insert', 'relay_capture_update',
                                       'relay_capture_delete', 'relay_capture_truncate')) = 4
                  and not exists (select 1 from pg_trigger where tgrelid = v_w.relid
                                   and tgname = 'relay_capture');
        perform relay._watch_triggers(v_w.relid::regclass);
        v_n := v_n + 1;
    end loop;
    return v_n;
end;
$$;

-- Move every watched table to statement-level capture now.
select relay._watch_triggers(relid::regclass) from relay.watched
 where exists (select 1 from pg_class c where c.oid = relid);

-- Grants: nothing for PUBLIC but reading the head; relay.broadcast through
-- the NOLOGIN role relay_publisher (grant it to the roles that may publish).
revoke all on all tables in schema relay from public;
revoke all on all sequences in schema relay from public;
revoke all on all functions in schema relay from public;
revoke all on procedure relay.settle(bigint) from public;
grant usage on schema relay to public;
grant execute on function relay.current_position(), relay.snapshot_head() to public;

do $$
declare
    v_can boolean := (select rolsuper or rolcreaterole from pg_roles where rolname = current_user);
begin
    if not exists (select 1 from pg_roles where rolname = 'relay_publisher') and v_can then
        create role relay_publisher nologin;
    end if;
    if exists (select 1 from pg_roles where rolname = 'relay_publisher') then
        grant usage on schema relay to relay_publisher;
        grant execute on function relay.broadcast(text, text, jsonb, text, text) to relay_publisher;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'relay_reader') and v_can then
        create role relay_reader nologin;
    end if;
    if exists (select 1 from pg_roles where rolname = 'relay_reader') then
        grant usage on schema relay to relay_reader;
        grant select on relay.changes, relay.batches, relay.meta, relay.watched, relay.settled,
            relay.topic_families, relay.seal_seq to relay_reader;
        grant execute on function relay.current_position(), relay.snapshot_head(),
            relay.can_subscribe(text, jsonb), relay.prune(interval, bigint, integer),
            relay.broadcast(text, text, jsonb, text, text),
            relay._broadcast(text, text, jsonb, text, text), relay._claim(bigint),
            relay._holes(bigint, integer), relay._mark_settled(bigint)
            to relay_reader;
        grant execute on procedure relay.settle(bigint) to relay_reader;
    end if;
end;
$$;
