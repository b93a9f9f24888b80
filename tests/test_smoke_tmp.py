def test_smoke(relay_server, db, make_table):
    t = make_table("id int primary key, org_id text, status text, n numeric")
    c = relay_server.open({"sub": t})
    db.execute(f"insert into {t} values (1, 'o1', 'new', 1.50)")
    db.execute(f"update {t} set status='running'")
    db.execute(f"delete from {t}")
    evs = c.take(3)
    for e in evs: print(e)
    c.close()
