-- Example application tables from our users' world, each watched by relay.
-- Applied by `relay migrate --demo`. Plain SQL: nothing here is relay-specific
-- except the relay.watch calls at the end.

create or replace function public.set_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create table if not exists public.streams (
    id uuid primary key default gen_random_uuid(),
    org_id text not null,
    name text not null,
    status text not null default 'active',
    target_metrics jsonb not null default '{}',
    progress jsonb not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.stream_items (
    id uuid primary key default gen_random_uuid(),
    stream_id uuid not null references public.streams (id) on delete cascade,
    org_id text not null,
    company_name text not null,
    stage text not null default 'discovered',
    quality_score numeric(5, 2),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.jobs (
    id uuid primary key default gen_random_uuid(),
    org_id text not null,
    user_id text,
    status text not null default 'pending',
    directories_completed integer not null default 0,
    directories_failed integer not null default 0,
    progress_percentage numeric(5, 2) not null default 0,
    metadata jsonb not null default '{}',
    started_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.directory_submissions (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    org_id text not null,
    directory_name text not null,
    status text not null default 'pending',
    submitted_at timestamptz,
    error_log text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.bulk_enrichment_jobs (
    id uuid primary key default gen_random_uuid(),
    user_id text not null,
    org_id text not null,
    status text not null default 'pending'
        check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
    progress jsonb not null default '{"total": 0, "completed": 0, "failed": 0, "current_batch": 0}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.agent_tasks (
    id uuid primary key default gen_random_uuid(),
    org_id text not null,
    agent_id text not null,
    contact_id text,
    status text not null default 'pending'
        check (status in ('pending', 'in_progress', 'completed', 'failed')),
    draft text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.notifications (
    id uuid primary key default gen_random_uuid(),
    user_id text not null,
    title text not null,
    body text,
    read boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

do $$
declare
    t text;
begin
    foreach t in array array['streams', 'stream_items', 'jobs', 'directory_submissions',
                             'bulk_enrichment_jobs', 'agent_tasks', 'notifications'] loop
        execute format('drop trigger if exists set_updated_at on public.%I', t);
        execute format('create trigger set_updated_at before update on public.%I '
                       'for each row execute function public.set_updated_at()', t);
        perform relay.watch(format('public.%I', t)::regclass);
    end loop;
end;
$$;

-- stream-progress:{streams.id} is readable by the stream's owners.
select relay.register_topic_family('stream-progress', 'public.streams');

-- A service that only inserts or updates stream_items drives the progress bar: after each
-- statement, one `progress-update` per stream it touched, on topic stream-progress:{id},
-- for the stream's org. Statement-level, so a 5-row burst is one message, not five.
create index if not exists stream_items_stream_id_idx on public.stream_items (stream_id);

create or replace function public.stream_progress(p_stream uuid) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_org text;
    v_target text;
    v_total integer;
    v_completed integer;
    v_quality numeric;
    v_stages jsonb;
begin
    select s.org_id, s.target_metrics ->> 'target' into v_org, v_target
      from public.streams s where s.id = p_stream;
    if not found then
        return; -- the stream is being deleted
    end if;
    v_total := case when v_target ~ '^\d{1,9}$' then v_target::integer else 0 end;
    select count(*), round(avg(i.quality_score), 1) into v_completed, v_quality
      from public.stream_items i where i.stream_id = p_stream;
    select coalesce(jsonb_object_agg(x.stage, x.n), '{}') into v_stages
      from (select i.stage, count(*) as n from public.stream_items i
             where i.stream_id = p_stream group by i.stage) x;
    perform relay.broadcast(
        'stream-progress:' || p_stream::text,
        'progress-update',
        jsonb_build_object(
            'stream_id', p_stream::text,
            'completed', v_completed,
            'total', v_total,
            'percentage', case when v_total > 0
                               then least(100, round(v_completed * 100.0 / v_total, 1))
                               else 0 end,
            'quality_score', v_quality,
            'items_by_stage', v_stages,
            'last_updated', now()),
        v_org);
exception when others then
    -- progress is a courtesy: it never makes the writer's statement fail
    raise warning 'stream_progress(%): % (%)', p_stream, sqlerrm, sqlstate;
end;
$$;

create or replace function public.stream_items_progress() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    if tg_op = 'INSERT' then
        for v_id in select distinct stream_id from new_rows loop
            perform public.stream_progress(v_id);
        end loop;
    elsif tg_op = 'UPDATE' then
        for v_id in select stream_id from new_rows union select stream_id from old_rows loop
            perform public.stream_progress(v_id);
        end loop;
    else
        for v_id in select distinct stream_id from old_rows loop
            perform public.stream_progress(v_id);
        end loop;
    end if;
    return null;
end;
$$;

drop trigger if exists stream_items_progress_ins on public.stream_items;
drop trigger if exists stream_items_progress_upd on public.stream_items;
drop trigger if exists stream_items_progress_del on public.stream_items;
create trigger stream_items_progress_ins after insert on public.stream_items
    referencing new table as new_rows
    for each statement execute function public.stream_items_progress();
create trigger stream_items_progress_upd after update on public.stream_items
    referencing old table as old_rows new table as new_rows
    for each statement execute function public.stream_items_progress();
create trigger stream_items_progress_del after delete on public.stream_items
    referencing old table as old_rows
    for each statement execute function public.stream_items_progress();
