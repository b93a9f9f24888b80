-- The relay reads the registered topic families, so that a stream on
-- `family:{id}` loses the topic when row {id} changes owner and a replay
-- skips broadcasts sent while someone else owned it (issue 15).
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'relay_reader') then
        grant select on relay.topic_families to relay_reader;
    end if;
end;
$$;
