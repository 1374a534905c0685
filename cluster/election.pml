/*
 * The election of cluster/election.py as a Promela model, for spin.
 *
 * What is modelled: N = 2 or 3 nodes (-DN=3), each one Election machine plus what
 * its driver does around it (tests/cluster/simnet.py: SimNode): the persisted epoch
 * (PersistEpoch) that survives a restart, a new incarnation at every boot, a
 * supervisor that restarts a node that stepped down, and the heartbeat sequence
 * filter. The world: message loss, duplication and reordering (any in-flight packet
 * of a sender may arrive first), kill -9 (with the host up, the dead process's links
 * close and its slaves find its port refused: Election.master_gone; or not, when the
 * host vanished), SIGTERM (Election.stop), restarts, and pauses (SIGSTOP: the node
 * takes no step while the others go on and its deadlines keep passing; on SIGCONT it
 * finds its lease and windows as late as they really are).
 *
 * Time is discrete: one tick is a quarter of failover.delay, so delay = 4 ticks,
 * slack = settle = 1, skew = 2; retries = 2 (-DRETRIES), so the takeover window (and
 * the lease) is 8 ticks. A global scheduler (the process world) moves time on by one
 * tick, runs Election.tick of every running node (calling it at every tick is calling
 * it at or after each deadline, which tick's docstring allows), then chooses among
 * packet arrivals and faults in any order until it moves time on again. Timers are
 * ages or countdowns that stop at the value beyond which no rule tells them apart,
 * so the state space is finite.
 *
 * Abstracted away (and why it does not matter to what is checked):
 *  - time granularity: every event happens on a tick; network delay is shorter than a
 *    tick; timers fire on time (a late one is a pause).
 *  - data position ranking: every node is equally up to date, so candidates rank by
 *    (priority, node id) only: rank_key's data_epoch/data_seq are all zero. Node 1
 *    has the higher priority; 0 and 2 tie and rank by id. The position only picks
 *    which candidate claims first, never whether two may.
 *  - partitions: a node's link cut loses every packet to or from it (a 1/2 or 1/1
 *    split) until it is mended.
 *  - sequence numbers: the in-flight packets of one sender to one receiver are kept
 *    in send order, at most 2 per link (a third pushes out the oldest: a loss), and
 *    any of them may arrive first (reordering). When one is taken in, every packet
 *    sent before it, and the other copy of a duplicated one, is dropped at once: its
 *    arrival would be an older (incarnation, seq), which Election.receive ignores. A
 *    process that dies loses its socket's buffer.
 *  - scheduling within a tick: all timers (tick) of the tick run first, in node order
 *    (they commute: a tick touches only its own machine and queues packets), then
 *    packets and faults in any order; a packet is taken in within the tick it was
 *    sent, unless it waits in a paused node's buffer.
 *  - _forget_silent_peers (20 windows of silence) is never reached in these runs'
 *    horizons: peers are never forgotten. max(peer epochs) in _promote is computed,
 *    although _record keeps known_epoch above every peer epoch anyway.
 *  - master_gone's closed_at is the death's tick and the refusal arrives in that tick
 *    or never; reassure's "half a settle later" rounds up to the next tick.
 *  - logging, Follow/MasterLost (informational actions), id conflicts, codec.
 *  - bounds per run, so that the search is exhaustive: at most MAXF process faults
 *    (kill -9, SIGTERM, SIGSTOP, a node's link cut), at most MAXL single packets lost
 *    or duplicated, and a run in which a promotion during faults would go past epoch
 *    MAXE (3) is cut there (not explored further). Reordering is unbounded. The test
 *    (tests/cluster/test_election_model.py) uses MAXF=2 MAXL=2 RETRIES=2 on 2 nodes,
 *    MAXF=1 MAXL=0 RETRIES=1 on 3.
 *
 * Properties: compile with exactly one -DPROP_... (see each at its check below):
 *   PROP_ONE_MASTER_PER_EPOCH, PROP_EPOCHS_INCREASE, PROP_LEASE_STOPS,
 *   PROP_LEASE_HANDOVER, PROP_ONE_MASTER_AFTER_FAULTS.
 * Mutations that each must break one of them:
 *   -DDROP_LEASE     _lease_lost never fires: a master whose lease ran out goes on
 *                    (breaks PROP_LEASE_STOPS);
 *   -DDROP_TIEBREAK  master_beats compares epochs only: two masters that meet at equal
 *                    epochs both stay (breaks PROP_ONE_MASTER_PER_EPOCH and
 *                    PROP_ONE_MASTER_AFTER_FAULTS).
 * Run: spin -a -DN=3 -DPROP_LEASE_STOPS election.pml && gcc -O1 -DSAFETY -o pan pan.c && ./pan
 * (tests/cluster/test_election_model.py does this for every property).
 */

#ifndef N
#define N 2
#endif
#if N < 2 || N > 3
#error "the model has 2 or 3 nodes"
#endif

#define D       4               /* failover.delay, in ticks */
#ifndef RETRIES
#define RETRIES 2               /* failover.retries */
#endif
#define W       (D * RETRIES)   /* Timing.window (the lease, too) */
#define SLACK   1               /* Timing.slack = delay / 4 */
#define SETTLE  1               /* Timing.settle = delay / 4 */
#define SKEW    2               /* Timing.skew = delay / 2 */
#ifndef MAXF
#define MAXF    2               /* process faults per run */
#endif
#ifndef MAXL
#define MAXL    2               /* packets lost or duplicated per run */
#endif
#ifndef MAXE
#define MAXE    3               /* epochs explored while faults go on */
#endif
#ifndef K
#define K       24              /* ticks (6 delays) allowed without one master after faults */
#endif

/* where the ages stop: past these values no rule of election.py tells them apart */
#define MH_MAX  (W + SLACK)                 /* SLAVE stands at now >= heard + window + slack */
#define HA_MAX  (W + SLACK + 1)             /* live_peers: heard >= now - window - slack */
#define LA_MAX  (SETTLE + (N - 1) * SKEW)   /* _claim_time: lost_at + settle + rank * skew */
#define FA_MAX  (W + LA_MAX)                /* _claim_time: first_heard + window */

/* State */
#define DOWN      0   /* no process: killed, stepped down (Demote: exit), or not started */
#define JOINING   1
#define SLAVE     2
#define CANDIDATE 3
#define MASTER    4
/* Role */
#define RSLAVE   0
#define RMASTER  1
#define RLEAVING 2
#define NONE     255

#define RUNNING(i) (st[i] != DOWN && !paused[i])   /* has a process, not stopped */
#define PR(a, b) ((a) * N + (b))   /* a's view of b; the link a -> b */
#define SL(p, k) ((p) * 2 + (k))   /* slot k of link p */
#define PRIO(i)  (1 + ((i) == 1))
/* rank_key: a better-ranked candidate: higher priority, then smaller id */
#define BETTER(j, i) (PRIO(j) > PRIO(i) || (PRIO(j) == PRIO(i) && (j) < (i)))
/* master_beats((e1, p1, n1), (e2, p2, n2)) */
#ifdef DROP_TIEBREAK
#define BEATS(e1, p1, n1, e2, p2, n2) ((e1) > (e2))
#else
#define BEATS(e1, p1, n1, e2, p2, n2) \
	((e1) > (e2) || ((e1) == (e2) && ((p1) > (p2) || ((p1) == (p2) && (n1) < (n2)))))
#endif

#ifdef PROP_ONE_MASTER_AFTER_FAULTS
#define QUIET_PHASE
#endif

/* -- one Election per node (its fields, as ages or countdowns) ----------------------- */
byte st[N];       /* state */
byte ep[N];       /* epoch */
byte known[N];    /* known_epoch */
byte stored[N];   /* what PersistEpoch wrote: survives kill and restart */
byte mst[N] = NONE;   /* master */
byte inc[N];      /* incarnation */
bit paused[N];
byte nb[N];       /* _next_beat - now, stops at 0 */
byte lease[N];    /* _lease_until - now + 1, stops at 0: is_master needs >= 1 */
byte mh[N];       /* now - _master_heard */
byte ja[N];       /* now - _joined_at */
byte la[N];       /* now - _lost_at */
byte echo[N];     /* now - _last_echo */
bit gone[N];      /* _gone is pending */
byte gage[N];     /* now - _gone[1] */
/* peers: what node a last heard from node b, at PR(a, b) */
bit pk[N * N];    /* b is in a's peers */
byte prole[N * N];
byte pep[N * N];
byte pinc[N * N];
byte pha[N * N];  /* now - heard */
byte pfa[N * N];  /* now - first_heard */

/* -- the network: two slots per link, in send order ---------------------------------- */
byte bcp[N * N * 2];   /* copies in flight: 0 = empty, 2 = duplicated */
byte brole[N * N * 2];
byte bep[N * N * 2];
byte binc[N * N * 2];
bit rf[N * N];         /* a refusal of dead master a's port, for its slave b, this tick */
byte rfe[N * N];       /* ... with the epoch b followed */
byte rfi[N * N];       /* ... and a's incarnation (its port) */
bit rs[N];             /* a slave's link to this master closed: reassure */

bit cut[N];            /* the node's link is down: every packet to or from it is lost */
bit soon[N];           /* the supervisor restarts this dead node at the next tick */
hidden byte ds, dr, dk, dn;   /* the arrival chosen: sender, receiver, slot */
byte faults;           /* process faults and link cuts so far */
byte losses;           /* packets lost or duplicated so far */
bit pruned;            /* the run went past MAXE while faults went on: not explored further */
#ifdef QUIET_PHASE
bit quiet;             /* faults are over */
byte qage;             /* ticks since without exactly one master (SimNet.settled) */
#define FAULTY (!pruned && !quiet)
#else
#define quiet 0
#define FAULTY (!pruned)
#endif

/* ghost state of the properties */
#ifdef PROP_ONE_MASTER_PER_EPOCH
bit met[N * N];        /* a, master at epoch e, took in b's master heartbeat at epoch e */
#endif
#ifdef PROP_LEASE_HANDOVER
bit bcur[N * N * 2];   /* the slot holds the heartbeat that set its sender's current lease */
bit seen[N * N];       /* PR(a, b): b followed a on the heartbeat of a's current lease */
#endif

/* scratch, inside one atomic step only */
hidden byte x, y, z, q, c, pe, nbet, lm, since, tn;
hidden byte mrole, mep, minc;
hidden byte mcur, handled, expired, ready, ok;
hidden short anchor;

/* -- the network ------------------------------------------------------------------- */

inline remove_slot(p, k) {
	z = k;
	do
	:: z < 1 -> bcp[SL(p, z)] = bcp[SL(p, z + 1)];
		brole[SL(p, z)] = brole[SL(p, z + 1)]; bep[SL(p, z)] = bep[SL(p, z + 1)];
		binc[SL(p, z)] = binc[SL(p, z + 1)];
#ifdef PROP_LEASE_HANDOVER
		bcur[SL(p, z)] = bcur[SL(p, z + 1)];
#endif
		z++
	:: else -> break
	od;
	bcp[SL(p, 1)] = 0; brole[SL(p, 1)] = 0; bep[SL(p, 1)] = 0;
	binc[SL(p, 1)] = 0;
#ifdef PROP_LEASE_HANDOVER
	bcur[SL(p, 1)] = 0;
#endif
	skip
}

/* the sender's kernel puts a packet on link p (a full link loses its oldest packet) */
inline append(p, role, e, i) {
	if
	:: bcp[SL(p, 1)] > 0 ->
		remove_slot(p, 0);
#ifdef QUIET_PHASE
		if :: quiet -> pruned = 1 :: else fi   /* a loss: not a fault-free run */
#endif
	:: else
	fi;
	y = (bcp[SL(p, 0)] > 0);
	bcp[SL(p, y)] = 1; brole[SL(p, y)] = role; bep[SL(p, y)] = e;
	binc[SL(p, y)] = inc[i];
#ifdef PROP_LEASE_HANDOVER
	bcur[SL(p, y)] = (role == RMASTER);
#endif
}

/* SimNet.broadcast: a heartbeat (Send) reaches every node that has a process */
inline send(i, role, e) {
#ifdef PROP_LEASE_HANDOVER
	if
	:: role == RMASTER ->   /* a new lease: older heartbeats no longer carry it */
		for (x : 0 .. N - 1) {
			seen[PR(i, x)] = 0;
			bcur[SL(PR(i, x), 0)] = 0; bcur[SL(PR(i, x), 1)] = 0
		}
	:: else
	fi;
#endif
	for (x : 0 .. N - 1) {
		if
		:: x != i && st[x] != DOWN && !cut[i] && !cut[x] -> append(PR(i, x), role, e, i)
		:: else
		fi
	}
}

/* a packet of s arrives at r. The sequence filter of Election.receive, by position:
 * every packet of s to r sent before it (and the other copy of it, if duplicated) is
 * older news now; when it arrives it is dropped unread (an older (incarnation, seq)),
 * so the model drops it now */
inline take(s, r, k) {
	q = PR(s, r);
	mrole = brole[SL(q, k)]; mep = bep[SL(q, k)]; minc = binc[SL(q, k)];
#ifdef PROP_LEASE_HANDOVER
	mcur = bcur[SL(q, k)];
#endif
	y = k + 1;
	do
	:: y > 0 -> remove_slot(q, 0); y--
	:: else -> break
	od
}

/* -- process life (SimNode) -------------------------------------------------------- */

/* the process is gone (kill -9, or exit after Demote): its socket buffer with it, its
 * links close (SimNet.links_closed: its slaves find its port refused; its master is
 * told to reassure), and nothing of the machine is left but the persisted epoch */
inline death(i) {
	for (x : 0 .. N - 1) {
		if
		:: x != i && st[x] == SLAVE && mst[x] == i && !cut[i] && !cut[x] ->
			rf[PR(i, x)] = 1; rfe[PR(i, x)] = ep[x]; rfi[PR(i, x)] = inc[i]
		:: else
		fi;
		if
		:: x != i && st[i] == SLAVE && mst[i] == x && st[x] == MASTER && !cut[i] && !cut[x] ->
			rs[x] = 1
		:: else
		fi;
		do
		:: bcp[SL(PR(x, i), 0)] > 0 -> remove_slot(PR(x, i), 0)
		:: else -> break
		od;
		pk[PR(i, x)] = 0; prole[PR(i, x)] = 0; pep[PR(i, x)] = 0; pinc[PR(i, x)] = 0;
		pha[PR(i, x)] = 0; pfa[PR(i, x)] = 0; rf[PR(x, i)] = 0;
#ifdef PROP_ONE_MASTER_PER_EPOCH
		met[PR(i, x)] = 0; met[PR(x, i)] = 0;
#endif
	}
	st[i] = DOWN; paused[i] = 0; ep[i] = 0; known[i] = 0; mst[i] = NONE;
	nb[i] = 0; lease[i] = 0; mh[i] = 0; ja[i] = 0; la[i] = 0; echo[i] = 0; gone[i] = 0;
	gage[i] = 0; rs[i] = 0; soon[i] = 0
}

/* SimNode.boot + Election.__init__ + Election.start */
inline boot(i) {
	inc[i]++;
	st[i] = JOINING; known[i] = stored[i]; ep[i] = stored[i]; mst[i] = NONE;
	ja[i] = 0; echo[i] = SKEW;
	beat(i)
}

/* -- Election: helpers ------------------------------------------------------------- */

/* _beat */
inline beat(i) {
	nb[i] = D;
	if
	:: st[i] == MASTER ->
#ifdef PROP_EPOCHS_INCREASE
		/* what a master announces is the epoch it persisted */
		assert(ep[i] == stored[i]);
#endif
		lease[i] = W + 1; send(i, RMASTER, ep[i])
	:: else -> send(i, RSLAVE, known[i])
	fi
}

/* _demote: Demote; the driver runs the stop hooks and exits (status 75) */
inline demote(i) {
	death(i); soon[i] = 1
}

/* _lease_lost */
inline lease_lost(i) {
#ifndef DROP_LEASE
	if
	:: st[i] == MASTER && lease[i] == 0 -> demote(i); handled = 1
	:: else
	fi
#else
	skip   /* the mutation: the lease is never looked at */
#endif
}

/* entry of every input (tick, receive, master_gone, reassure) */
inline enter(i) {
	expired = (st[i] == MASTER && lease[i] == 0);
	handled = 0;
	lease_lost(i)
}

/* exit of every input */
inline leave(i) {
#ifdef PROP_LEASE_STOPS
	/* PROPERTY "a master whose lease ran out stops acting": a node that was MASTER with
	 * now > _lease_until when an input came (is_master(now) false) leaves that step no
	 * longer master, having sent nothing as master: the first thing it does is step
	 * down (_lease_lost, checked first by tick, receive, master_gone and reassure) */
	assert(!(expired && st[i] == MASTER));
#endif
	skip
}

/* the followed master beat: _master_heard = now (and a pending _gone is over) */
inline heard_master(r, s) {
	mh[r] = 0; gone[r] = 0;
#ifdef PROP_LEASE_HANDOVER
	if :: mcur -> seen[PR(s, r)] = 1 :: else fi
#endif
}

/* _follow */
inline follow(r, s) {
	if :: mst[r] != s || st[r] != SLAVE -> gone[r] = 0 :: else fi;
	st[r] = SLAVE; mst[r] = s; ep[r] = mep; la[r] = 0; ja[r] = 0;
	heard_master(r, s)
}

/* _become_candidate(now, master, reason, actions, since) */
inline become_candidate(i, m, back) {
	lm = m; since = back;
	st[i] = CANDIDATE; la[i] = since; gone[i] = 0; gage[i] = 0; mh[i] = 0; ja[i] = 0;
	if
	:: lm != NONE && pk[PR(i, lm)] -> prole[PR(i, lm)] = RLEAVING   /* out of the ranking */
	:: else
	fi;
	mst[i] = NONE;
	beat(i)
}

/* now >= _claim_time(now): after every better-ranked live peer had its turn, and after
 * the listening window of one still joining */
inline claim_ready(i) {
	nbet = 0; anchor = 0 - la[i];
	for (x : 0 .. N - 1) {
		if
		:: x != i && pk[PR(i, x)] && pha[PR(i, x)] <= W + SLACK && prole[PR(i, x)] != RLEAVING &&
		   BETTER(x, i) ->
			nbet++;
			if
			:: W - pfa[PR(i, x)] > anchor -> anchor = W - pfa[PR(i, x)]
			:: else
			fi
		:: else
		fi
	}
	ready = (anchor + SETTLE + nbet * SKEW <= 0)
}

/* _promote */
inline promote(i) {
	pe = known[i];
	for (x : 0 .. N - 1) {
		if :: x != i && pk[PR(i, x)] && pep[PR(i, x)] > pe -> pe = pep[PR(i, x)] :: else fi
	}
	pe++;
#ifdef PROP_EPOCHS_INCREASE
	/* PROPERTY "epochs never reused on a node": PersistEpoch(e) comes with an e greater
	 * than every epoch the node persisted before, in this or an earlier incarnation
	 * (as SimNode.apply asserts); what it announces as master is what it persisted
	 * (checked in beat). Across nodes, partitions may reuse an epoch: see
	 * PROP_ONE_MASTER_PER_EPOCH. */
	assert(pe > stored[i]);
#endif
	stored[i] = pe;   /* PersistEpoch, before anything is announced with it */
	st[i] = MASTER; mst[i] = i; ep[i] = pe; known[i] = pe; la[i] = 0; gone[i] = 0;
	gage[i] = 0;
#ifdef PROP_ONE_MASTER_PER_EPOCH
	for (x : 0 .. N - 1) { met[PR(i, x)] = 0; met[PR(x, i)] = 0 }
#endif
	beat(i);
	nb[i] = SKEW / 2;   /* say it twice */
	if :: pe > MAXE && !quiet -> pruned = 1 :: else fi
}

/* -- Election: transitions (_ON_HEARTBEAT) ----------------------------------------- */

/* _hears_master: (JOINING|CANDIDATE, MASTER); _slave_hears_master: (SLAVE, MASTER) */
inline on_master_heartbeat(r, s) {
	if
	:: st[r] == SLAVE && mst[r] == s ->
		if :: mep >= ep[r] -> ep[r] = mep; heard_master(r, s) :: else fi
	:: else ->
		if
		:: mep < known[r] -> skip   /* a stale master: it will hear the new one and go */
		:: else ->
			ok = 1;
			if
			:: st[r] == SLAVE && mst[r] != NONE ->
				c = PR(r, mst[r]);
				if
				:: pk[c] && prole[c] == RMASTER && mh[r] < W &&
				   !BEATS(mep, PRIO(s), s, ep[r], PRIO(mst[r]), mst[r]) ->
					ok = 0   /* our master wins the meeting */
				:: else
				fi
			:: else
			fi;
			if :: ok -> follow(r, s) :: else fi
		fi
	fi
}

/* _slave_hears_leaving: (SLAVE, LEAVING) */
inline on_leaving(r, s) {
	if
	:: mst[r] == s ->
		become_candidate(r, s, 0);
		claim_ready(r);
		if :: ready -> promote(r) :: else fi
	:: else
	fi
}

/* _candidate_hears_leaving: (CANDIDATE, LEAVING) */
inline candidate_hears_leaving(r) {
	claim_ready(r);
	if :: ready -> promote(r) :: else fi
}

/* _master_meets_master: (MASTER, MASTER) */
inline master_meets_master(r, s) {
#ifdef PROP_ONE_MASTER_PER_EPOCH
	if :: mep == ep[r] -> met[PR(r, s)] = 1 :: else fi
#endif
	if
	:: BEATS(mep, PRIO(s), s, ep[r], PRIO(r), r) -> demote(r)
	:: else ->
		if :: echo[r] >= SKEW -> echo[r] = 0; beat(r) :: else fi
	fi
}

/* _master_hears_node: (MASTER, SLAVE|LEAVING) */
inline master_hears_node(r, s) {
	if :: mep > ep[r] -> demote(r) :: else fi
}

/* -- Election: inputs -------------------------------------------------------------- */

/* Election.receive (the packet is in mrole, mep, minc) */
inline receive(r, s) {
	enter(r);
	if
	:: handled -> skip
	:: else ->
		/* _record */
		q = PR(r, s);
		if
		:: !pk[q] || pinc[q] != minc -> pfa[q] = 0   /* first heard, or restarted */
		:: else
		fi;
		pk[q] = 1; prole[q] = mrole; pha[q] = 0;
		/* kept only where a rule reads them (fewer states, same behaviour): the epoch
		 * and incarnation of a master (master_gone, the meeting of two masters), the
		 * incarnation of a better-ranked peer (first_heard), the heard time of one
		 * (live_peers in _claim_time) */
		pep[q] = (mrole == RMASTER -> mep : 0);
		pinc[q] = (mrole == RMASTER || BETTER(s, r) -> minc : 0);
		/* receive: a higher epoch heard is persisted too (PersistEpoch), so that a node
		 * restarting alone never takes one it heard held (the fault campaign, seed 4028) */
		if :: mep > known[r] -> known[r] = mep; stored[r] = mep :: else fi;
		if
		:: mrole == RMASTER && st[r] != MASTER -> on_master_heartbeat(r, s)
		:: mrole == RLEAVING && st[r] == SLAVE -> on_leaving(r, s)
		:: mrole == RLEAVING && st[r] == CANDIDATE -> candidate_hears_leaving(r)
		:: mrole == RMASTER && st[r] == MASTER -> master_meets_master(r, s)
		:: mrole != RMASTER && st[r] == MASTER -> master_hears_node(r, s)
		:: else -> skip   /* _ignore */
		fi
	fi;
	leave(r)
}

/* Election.tick */
inline tick(i) {
	enter(i);
	if
	:: handled -> skip
	:: else ->
		if
		:: st[i] == JOINING && ja[i] >= W -> become_candidate(i, NONE, 0)
		:: st[i] == SLAVE && mh[i] >= W + SLACK -> become_candidate(i, mst[i], 0)
		:: st[i] == SLAVE && mh[i] < W + SLACK && gone[i] && gage[i] >= SETTLE ->
			become_candidate(i, mst[i], gage[i])   /* since the refusal */
		:: else
		fi;
		if
		:: st[i] == CANDIDATE -> claim_ready(i); if :: ready -> promote(i) :: else fi
		:: else
		fi;
		if :: nb[i] == 0 -> beat(i) :: else fi
	fi;
	leave(i)
}

/* Election.master_gone(host, port, epoch, closed_at, now): dead master m's port refused */
inline master_gone(s, m) {
	enter(s);
	if
	:: handled -> skip
	:: else ->
		q = PR(s, m);
		if
		:: st[s] == SLAVE && mst[s] == m && pk[q] && prole[q] == RMASTER &&
		   rfe[PR(m, s)] == ep[s] && pep[q] == ep[s] && pinc[q] == rfi[PR(m, s)] ->
			if :: !gone[s] -> gone[s] = 1; gage[s] = 0; beat(s) :: else fi
		:: else -> skip   /* gone_ignored */
		fi
	fi;
	leave(s)
}

/* Election.reassure */
inline reassure(i) {
	enter(i);
	if
	:: !handled && st[i] == MASTER -> beat(i); nb[i] = 1
	:: else
	fi;
	leave(i)
}

/* SimNode.resume (SIGCONT): a master looks at the clock first, then at what waited in
 * its socket buffer; any other node reads the buffer first (its packets are taken in
 * before time moves on) and ticks at the next tick */
inline resume(i) {
	paused[i] = 0;
	if :: st[i] == MASTER -> tick(i) :: else fi
}

/* Election.stop (SIGTERM): resign with a goodbye (sent twice: duplicated), then exit */
inline stop(i) {
	if
	:: st[i] == MASTER -> send(i, RLEAVING, ep[i])
	:: else -> send(i, RLEAVING, known[i])
	fi;
	for (x : 0 .. N - 1) {
		if :: x != i && bcp[SL(PR(i, x), 1)] == 1 -> bcp[SL(PR(i, x), 1)] = 2
		   :: x != i && bcp[SL(PR(i, x), 1)] == 0 && bcp[SL(PR(i, x), 0)] == 1 ->
			bcp[SL(PR(i, x), 0)] = 2
		   :: else
		fi
	}
	death(i)
}

/* -- properties that hold in every state ------------------------------------------- */

inline invariants() {
#ifdef PROP_ONE_MASTER_PER_EPOCH
	/* PROPERTY "at most one master per epoch", as multicast can give it: without a
	 * quorum, two sides of a partition may both promote with the same epoch
	 * (max seen + 1); what election.py guarantees is that two masters of one epoch
	 * never both survive hearing each other: the tie-break (master_beats: priority,
	 * then smaller id) makes exactly one of them the loser, which steps down on the
	 * first heartbeat of the winner it takes in. So: never are i and j both MASTER at
	 * the same epoch after each took in the other's master heartbeat at that epoch. */
	for (x : 0 .. N - 1) {
		for (y : 0 .. N - 1) {
			assert(!(x < y && st[x] == MASTER && st[y] == MASTER && ep[x] == ep[y] &&
			         met[PR(x, y)] && met[PR(y, x)]))
		}
	}
#endif
#ifdef PROP_LEASE_HANDOVER
	/* PROPERTY "lease-based safety": no node claims while a master it followed still
	 * acts on the lease of the heartbeat it followed. A master's lease ends one window
	 * after it sent its latest heartbeat; a node that took that heartbeat in claims at
	 * the earliest one window (plus slack and settle) after it received it, or one
	 * window plus settle after a restart. So never is j MASTER while i is MASTER with
	 * its lease valid (is_master) and j followed i on the heartbeat of that lease. A
	 * heartbeat j lost (a partition) is not covered: multicast cannot do better. */
	for (x : 0 .. N - 1) {
		for (y : 0 .. N - 1) {
			assert(!(x != y && st[x] == MASTER && lease[x] > 0 && st[y] == MASTER &&
			         seen[PR(x, y)]))
		}
	}
#endif
	skip
}

#ifdef QUIET_PHASE
/* PROPERTY "after faults end, exactly one master emerges" (bounded): once faults are
 * over (every node restarted, resumed and linked, no packet lost, each taken in within
 * its tick), the cluster spends at most K ticks in all (checked at every tick, forever
 * after) not settled: settled is exactly one node MASTER and every other one its SLAVE
 * at its epoch (SimNet.settled). So one master emerges within K ticks and then stays:
 * a takeover still under way when the faults end counts against K, and so would any
 * flapping later. */
inline settled() {
	z = 0; c = NONE;
	for (x : 0 .. N - 1) {
		if :: st[x] == MASTER -> z++; c = x :: else fi
	}
	ok = (z == 1);
	for (x : 0 .. N - 1) {
		if
		:: ok && x != c -> ok = (st[x] == SLAVE && mst[x] == c && ep[x] == ep[c])
		:: else
		fi
	}
}
#endif

/* -- time -------------------------------------------------------------------------- */

#define AGE(v, top) if :: v < top -> v++ :: else fi
inline advance() {
#ifdef QUIET_PHASE
	if
	:: quiet ->
		settled();
		if :: !ok -> qage++; assert(qage <= K) :: else fi
	:: else
	fi;
#endif
	for (x : 0 .. N - 1) {
		rs[x] = 0;
		if :: nb[x] > 0 -> nb[x]-- :: else fi;
		if :: lease[x] > 0 -> lease[x]-- :: else fi;
		if :: st[x] == SLAVE -> AGE(mh[x], MH_MAX) :: else fi;
		if :: st[x] == JOINING -> AGE(ja[x], W) :: else fi;
		if :: st[x] == CANDIDATE -> AGE(la[x], LA_MAX) :: else fi;
		if :: st[x] == MASTER -> AGE(echo[x], SKEW) :: else fi;
		if :: gone[x] -> AGE(gage[x], SETTLE) :: else fi;
		for (y : 0 .. N - 1) {
			rf[PR(x, y)] = 0; rfe[PR(x, y)] = 0; rfi[PR(x, y)] = 0;   /* not taken in: lost */
			if
			:: pk[PR(x, y)] && BETTER(y, x) ->
				AGE(pha[PR(x, y)], HA_MAX); AGE(pfa[PR(x, y)], FA_MAX)
			:: else
			fi
		}
	};
	/* the timers of the new tick: Election.tick of every running node (they commute:
	 * a tick reads and writes its own machine and only queues packets) */
	for (tn : 0 .. N - 1) {
		if :: RUNNING(tn) -> tick(tn); invariants() :: else fi
	};
	for (tn : 0 .. N - 1) {
		if :: st[tn] == DOWN && soon[tn] -> boot(tn); invariants() :: else fi
	}
}

/* link s -> r holds a packet its receiver can take */
#define PENDING(s, r) (bcp[SL(PR(s, r), 0)] > 0 && RUNNING(r))
#if N == 2
#define ALL_DELIVERED (!PENDING(0, 1) && !PENDING(1, 0))
#define ALL_RUNNING (RUNNING(0) && RUNNING(1))
#define ALL_LINKED (!cut[0] && !cut[1])
#else
#define ALL_DELIVERED (!PENDING(0, 1) && !PENDING(1, 0) && !PENDING(0, 2) && !PENDING(2, 0) && \
	!PENDING(1, 2) && !PENDING(2, 1))
#define ALL_RUNNING (RUNNING(0) && RUNNING(1) && RUNNING(2))
#define ALL_LINKED (!cut[0] && !cut[1] && !cut[2])
#endif

/* -- the scheduler: every event of the world, chosen nondeterministically -------------- */

/* the events of a node: its first start (at any time), a restart once faults are over,
 * SIGCONT, its replication links' news; the faults: kill -9 (restarted by the
 * supervisor at the next tick, or left dead: a vanished host), SIGTERM (exit 0: not
 * restarted), SIGSTOP, its link cut (and mended) */
#define CAN_BOOT(i)     (!pruned && st[i] == DOWN && (inc[i] == 0 || quiet))
#define CAN_RESUME(i)   (!pruned && paused[i])
#define CAN_REASSURE(i) (!pruned && rs[i] && RUNNING(i))
#define CAN_MEND(i)     (!pruned && cut[i])
#define CAN_KILL(i)     (FAULTY && faults < MAXF && st[i] != DOWN)
#define CAN_STOP(i)     (FAULTY && faults < MAXF && RUNNING(i))
#define CAN_CUT(i)      (FAULTY && faults < MAXF && !cut[i])
#if N == 2
#define PICK(can) :: can(0) -> dn = 0 :: can(1) -> dn = 1
#else
#define PICK(can) :: can(0) -> dn = 0 :: can(1) -> dn = 1 :: can(2) -> dn = 2
#endif
/* one node chosen, then the event as one step (one copy of its code) */
#define NODE_EVENT(can, body) :: atomic { if PICK(can) fi; d_step { body; invariants() } }

/* a packet of link s -> r, in slot k, is lost or duplicated */
#define SLOT_FAULTS(s, r, k) \
	:: d_step { FAULTY && losses < MAXL && bcp[SL(PR(s, r), k)] > 0 -> losses++; \
		bcp[SL(PR(s, r), k)]--; \
		if :: bcp[SL(PR(s, r), k)] == 0 -> remove_slot(PR(s, r), k) :: else fi; skip } \
	:: d_step { FAULTY && losses < MAXL && bcp[SL(PR(s, r), k)] == 1 -> losses++; \
		bcp[SL(PR(s, r), k)] = 2 }
#define LINK_FAULTS(s, r) SLOT_FAULTS(s, r, 0) SLOT_FAULTS(s, r, 1)

/* ... or arrives; or the refusal of dead master s's port reaches its slave r (dk = 2) */
#define ARRIVALS(s, r) \
	:: bcp[SL(PR(s, r), 0)] > 0 && RUNNING(r) -> ds = s; dr = r; dk = 0 \
	:: bcp[SL(PR(s, r), 1)] > 0 && RUNNING(r) -> ds = s; dr = r; dk = 1 \
	:: rf[PR(s, r)] && RUNNING(r) -> ds = s; dr = r; dk = 2

/* the arrival chosen */
inline arrive() {
	if
	:: dk < 2 -> take(ds, dr, dk); receive(dr, ds)
	:: else ->
		rf[PR(ds, dr)] = 0; master_gone(dr, ds); rfe[PR(ds, dr)] = 0; rfi[PR(ds, dr)] = 0
	fi;
	invariants()
}

active proctype world()
{
end:
	do
	NODE_EVENT(CAN_BOOT, boot(dn))
	NODE_EVENT(CAN_RESUME, resume(dn))
	NODE_EVENT(CAN_REASSURE, rs[dn] = 0; reassure(dn))
	NODE_EVENT(CAN_MEND, cut[dn] = 0)
	NODE_EVENT(CAN_KILL, faults++; death(dn); soon[dn] = 1)
	NODE_EVENT(CAN_KILL, faults++; death(dn))
	NODE_EVENT(CAN_STOP, faults++; stop(dn))
	NODE_EVENT(CAN_STOP, faults++; paused[dn] = 1)
	NODE_EVENT(CAN_CUT, faults++; cut[dn] = 1)
	LINK_FAULTS(0, 1)
	LINK_FAULTS(1, 0)
#if N > 2
	LINK_FAULTS(0, 2)
	LINK_FAULTS(2, 0)
	LINK_FAULTS(1, 2)
	LINK_FAULTS(2, 1)
#endif
	/* an arrival: chosen, then taken in, as one step (one copy of receive's code) */
	:: atomic {
		if
		ARRIVALS(0, 1)
		ARRIVALS(1, 0)
#if N > 2
		ARRIVALS(0, 2)
		ARRIVALS(2, 0)
		ARRIVALS(1, 2)
		ARRIVALS(2, 1)
#endif
		fi;
		d_step { arrive() }
	}
#ifdef QUIET_PHASE
	/* the faults end, between two ticks */
	:: d_step { !pruned && !quiet && ALL_DELIVERED -> quiet = 1 }
	:: d_step { !pruned && ALL_DELIVERED && (!quiet || ALL_RUNNING && ALL_LINKED) -> advance(); skip }
#else
	:: d_step { !pruned && ALL_DELIVERED -> advance(); skip }
#endif
	od
}
