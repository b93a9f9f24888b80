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
