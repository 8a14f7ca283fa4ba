/*
 * backupvault: CASPaxos replication of ONE vault entry plus the threshold flow's attempt
 * numbering (ShareKeeper's change functions in hsm/shares.py), for spin.
 * What it covers, how it maps to the code and how to run it: docs/fleet-model.md.
 *
 *   3 nodes (acceptors 0, 1, 2); clients at nodes 0 and 1 (their proposers), node 2 only
 *   accepts; guess limit L; at most OPS client requests in all; rounds 1..MAXR.
 *   Network: Prepare and Accept are broadcast and stay in the network for ever (any of
 *   them may be delivered to any peer at any time, any number of times, or never).
 *   Replies are handled in the same step as the message that causes them, or lost.
 *   One crash-restart of one node, at any moment, from a copy of its disk taken at any
 *   earlier moment (the current disk, the oldest copy, or anything between), then it
 *   must catch up before it answers anything. Or instead: a proposer crashes after its
 *   Accept left and before its own acceptance was written (replica._send_accept writes
 *   it while the Accept is on the wire); its disk matches its token, so it is back at
 *   once, without catching up, its proposer's memory gone.
 *
 * Switches (spin -D...):
 *   BUG_EVAL_BEFORE_COMMIT  mutant: the partial k_i·B is computed when the change is
 *                           computed (promise majority), before the attempt is committed.
 *   BUG_NO_CATCHUP          mutant: a restarted node acts as acceptor at once, with its
 *                           rolled-back state, without catching up from its peers.
 *   BUG_FREE_EVALUATE       mutant: an evaluate request with a new B that arrives while an
 *                           attempt is open is answered like a resend of that attempt's B,
 *                           uncharged.
 *   BUG_RESET_FORGETS_LATER mutant: a reset for an earlier attempt forgets every attempt,
 *                           also those made after it (rule R5 of docs/threshold.md broken).
 *   NO_USED_CHECK           drop the check attempts_used = attempt - reset_attempt, so that
 *                           a mutant's counterexample shows the count itself falling short.
 *   NO_DUP_CHECK            drop check 1a, so that a mutant's counterexample shows the
 *                           guess counter itself going above L.
 *   ROLLBACK_SIMPLE         restart only from the current disk or the oldest copy
 *                           (a smaller state space).
 *   NO_CRASH                no crash at all.
 *   LEADER                  the stable-leader path: every Accept also promises the
 *                           proposer's next ballot (round + 1) in the same write, and a
 *                           proposer that saw a majority accept keeps that promise and
 *                           sends its next change as an Accept at once (one round trip);
 *                           both proposers may lead at the same time.
 *   BUG_ACCEPT_UNRESERVED   mutant: a proposer's Accept leaves before the write that
 *                           reserved its ballot (its own promise of it) is durable: the
 *                           crash above loses that promise too.
 *   BUG_LEADER_NO_PROMISE   mutant (with LEADER): a leader sends its one-round Accept at
 *                           a fresh ballot on its own acceptor's value, without holding a
 *                           majority's promise (the promise check skipped).
 *   BUG_CLIMB_ANSWERS       mutant: an acceptor that climbs toward a ballot out of its
 *                           reach (promising a lower round of that ballot's node) answers
 *                           as if it had promised the ballot asked for.
 *   L, MAXR, OPS            the bound: guess limit (1..3), rounds, client requests.
 */

#ifndef L
#define L 2
#endif
#ifndef MAXR
#define MAXR 2
#endif
#ifndef OPS
#define OPS 3
#endif
#define MAXSEQ 7
#if L < 1 || L > 3
#error "L is 1..3 (attempts_used has two bits here)"
#endif

/* ---- ballots: (round, node) as one index 2*round + node; only nodes 0, 1 propose, so
 *      index order is (round, node) order. Index 0 = (0, 0) = "nothing". ---- */
#define NB (2 * MAXR + 2)
#define BNODE(b) ((b) & 1)
#define BROUND(b) ((b) >> 1)
#define BIT(i) (1 << (i))

/* ---- the entry's value (ThresholdState reduced to what guess counting reads):
 *      dead (status destroyed), attempts_used, attempt_seq (`attempt`), success_seq
 *      (`reset_attempt`: the attempt of the owner's last signed reset) ---- */
#define DEAD(v) ((v) & 1)
#define USED(v) (((v) >> 1) & 3)
#define ASEQ(v) (((v) >> 3) & 15)
#define SSEQ(v) (((v) >> 7) & 15)
#define MKV(d, u, a, s) ((d) | ((u) << 1) | ((a) << 3) | ((s) << 7))
#define LIVE0 MKV(0, 0, 0, 0) /* registered, committed everywhere before the run */

/* client operations and change outcomes */
#define OP_START 1 /* evaluate request with a new blinded element B */
#define OP_RESET 2 /* the owner's signed reset for attempt tk (any attempt that was
                      evaluated; the relay may replay it at any time, any number of times) */
#define OP_RESEND 4 /* evaluate request again with attempt tk's own B (a lost answer, or a
                       relay's replay): answered again without a charge while it is the
                       latest open attempt, refused otherwise */
#define O_NONE 0
#define O_EVAL 1    /* the nodes answer k_i·B for the new attempt */
#define O_RESET 2   /* the reset is committed: the window restarts after attempt tk */
#define O_DESTROYED 3
#define O_STALE 4
#define O_AGAIN 6   /* the nodes answer k_i·B again for the same attempt and B */

/* proposer phases */
#define IDLE 0
#define PREPARE 1
#define ACCEPT 2
#define WAITING 3 /* queued, or backing off: the next step is a new round or giving up */

/* ---- acceptors (durable AcceptorRecord: promised, accepted ballot, value) ---- */
byte prom[3];
byte accb[3];
short val[3];
bool ready[3];
bool own[3]; /* its accepted value is one it took itself since its last start (Replica._taken) */

/* ---- network: sent Prepares and Accepts, by ballot ---- */
short prep_sent;
short acc_sent;
short accval[NB];

/* ---- proposers at nodes 0 and 1, one request at a time each ---- */
byte ph[2];
byte held[2];  /* LEADER: a ballot a majority promised this proposer (0: none) ... */
short heldv[2]; /* ... and the newest value among those acceptors */
byte pb[2];    /* current ballot */
byte op[2];
byte tk[2];    /* the attempt a reset or a resend names */
byte bestb[2]; /* own acceptor's promise: accepted ballot and value */
short bestv[2];
byte outc[2];  /* the outcome computed with the new value */
byte ops_left = OPS;

/* ---- the crash: 0 none yet, 1 backup copy taken, 2 restarted (catching up), 3 done ---- */
byte cp;
byte cn;
byte snap_prom;
byte snap_accb;
short snap_val;
byte synced; /* peers whose SyncResponse has arrived */

/* ---- a proposer's own acceptance, written while its Accept is on the wire: in flight
 *      (wip) until a later step of its acceptor or its commit, which come after the write
 *      (the shell sends nothing past a write under way); pre_*: its record before ---- */
bool wip[3];
byte pre_prom[3];
byte pre_accb[3];
short pre_val[3];
byte tp_;
byte ta_;
short tv_;

inline durable(n) {
	wip[n] = false; pre_prom[n] = 0; pre_accb[n] = 0; pre_val[n] = 0
}

byte lb_;
short lv_;

/* ---- ghosts ---- */
short learned;  /* ballots whose proposer saw a majority accept them: committed values */
byte g_cb;      /* the highest of them ... */
short g_cv = LIVE0; /* ... and its value: the committed state */
short issued;   /* attempt_seqs that were evaluated */
short resets;   /* attempt_seqs whose reset was committed */
byte g_since;   /* evaluations paid after the last committed reset */

#define POP3(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1))
#define POP7(x) (POP3(x) + POP3((x) >> 3) + (((x) >> 6) & 1))

/* The evaluation (the nodes' partials k_i·B) paid for by attempt s. */
inline evaluate(s) {
#ifndef NO_DUP_CHECK
	assert(!(issued & BIT(s)));            /* 1a: one increment pays for one evaluation */
#endif
	assert(!DEAD(g_cv) || s <= ASEQ(g_cv)); /* 2: nothing after the tombstone's commit */
	printf("EVAL attempt %d\n", s);
	issued = issued | BIT(s);
	if
	:: s > SSEQ(g_cv) ->
		g_since++;
		assert(g_since <= L)               /* 1: at most L evaluations after a success */
	:: else -> skip /* paid before the last reset, learned late */
	fi
}

/* The same B answered again for attempt s: a new evaluation only if attempt s was never
 * evaluated before (its first answer may have been lost before it was built). */
inline evaluate_again(s) {
	if
	:: issued & BIT(s) -> printf("EVAL attempt %d again (not a new evaluation)\n", s)
	:: else -> evaluate(s)
	fi
}

/* x -> y is a step forward (or no step) along one chain of committed values. */
#define FORWARD(x, y) (ASEQ(y) >= ASEQ(x) && SSEQ(y) >= SSEQ(x) && DEAD(y) >= DEAD(x) \
	&& (y == x || ASEQ(y) > ASEQ(x) || SSEQ(y) > SSEQ(x) || DEAD(y) > DEAD(x)))

byte gi; /* loop index, kept 0 between steps */

/* The proposer of ballot b has seen a majority accept it: value v is committed (the
 * commits that are acted on; a value a majority accepted but nobody learned has no
 * effect of its own, and is checked through the commits that adopted it). A proposer
 * can learn a lower ballot's commit after a higher one's (its value is then the higher
 * one's ancestor), so commits are ordered by ballot, not by the time they are learned. */
inline committed(b, v) {
	printf("node %d learns: COMMITTED ballot (%d,%d) value [dead %d used %d aseq %d sseq %d]\n",
		BNODE(b), BROUND(b), BNODE(b), DEAD(v), USED(v), ASEQ(v), SSEQ(v));
	assert(FORWARD(LIVE0, v));
#ifndef NO_USED_CHECK
	assert(USED(v) + SSEQ(v) == ASEQ(v)); /* attempts_used = attempt - reset_attempt */
#endif
	gi = 2;
	do
	:: gi < NB ->
		if
		:: gi != b && (learned & BIT(gi)) ->
			if
			:: gi < b -> assert(FORWARD(accval[gi], v))  /* 4: never backwards */
			:: else -> assert(FORWARD(v, accval[gi]))
			fi
		:: else -> skip
		fi;
		gi++
	:: else -> break
	od;
	gi = 0;
	learned = learned | BIT(b);
	if
	:: b > g_cb ->
		assert(!DEAD(g_cv) || DEAD(v));                 /* 2: never live again */
		if
		:: SSEQ(v) > SSEQ(g_cv) ->
			/* 3: a reset names an attempt that was evaluated, and forgets only the
			 * attempts up to it: those evaluated after it stay counted */
			assert(issued & BIT(SSEQ(v)));
			g_since = POP7(issued >> (SSEQ(v) + 1));
			assert(g_since <= USED(v))
		:: else -> skip
		fi;
		g_cb = b;
		g_cv = v
	:: else -> skip
	fi
}

/* The change functions of hsm/shares.py (ShareKeeper._evaluate and _reset), applied to
 * the adopted value cur. */
inline change(p, cur, nv, out) {
	if
	:: DEAD(cur) -> nv = cur; out = O_DESTROYED
	:: else ->
		if
		:: op[p] == OP_START ->
			if
#ifdef BUG_FREE_EVALUATE
			:: ASEQ(cur) > SSEQ(cur) -> nv = cur; out = O_EVAL
			:: ASEQ(cur) <= SSEQ(cur) && USED(cur) >= L ->
				nv = MKV(1, L, ASEQ(cur), SSEQ(cur)); out = O_DESTROYED
			:: ASEQ(cur) <= SSEQ(cur) && USED(cur) < L ->
#else
			:: USED(cur) >= L -> nv = MKV(1, L, ASEQ(cur), SSEQ(cur)); out = O_DESTROYED
			:: else ->
#endif
				assert(ASEQ(cur) < MAXSEQ);
				nv = MKV(0, USED(cur) + 1, ASEQ(cur) + 1, SSEQ(cur)); out = O_EVAL
			fi
		:: op[p] == OP_RESEND && ASEQ(cur) == tk[p] && SSEQ(cur) < tk[p] ->
			nv = cur; out = O_AGAIN
		:: op[p] == OP_RESEND && (ASEQ(cur) != tk[p] || SSEQ(cur) >= tk[p]) ->
			nv = cur; out = O_STALE
		:: op[p] == OP_RESET && SSEQ(cur) < tk[p] && tk[p] <= ASEQ(cur) ->
#ifdef BUG_RESET_FORGETS_LATER
			nv = MKV(0, 0, ASEQ(cur), tk[p]); out = O_RESET
#else
			nv = MKV(0, ASEQ(cur) - tk[p], ASEQ(cur), tk[p]); out = O_RESET
#endif
		:: op[p] == OP_RESET && (SSEQ(cur) >= tk[p] || tk[p] > ASEQ(cur)) ->
			nv = cur; out = O_STALE
		fi
	fi
}

/* Acceptor a accepts ballot b (persisted), with the ghost bookkeeping. */
inline accept_at(a, b) {
	printf("node %d accepts ballot (%d,%d)\n", a, BROUND(b), BNODE(b));
	durable(a);
#ifdef LEADER
	/* pipelined: the same write promises (round + 1, node), within the bound */
	if
	:: BROUND(b) < MAXR -> prom[a] = b + 2
	:: else -> prom[a] = b
	fi;
#else
	prom[a] = b;
#endif
	accb[a] = b;
	val[a] = accval[b];
	own[a] = true
}

short nv_;
byte out_;

/* Proposer p's own acceptor accepts its ballot b, the write still in flight. */
inline own_accept(p, b) {
	tp_ = prom[p]; ta_ = accb[p]; tv_ = val[p];
	accept_at(p, b);
	wip[p] = true; pre_prom[p] = tp_; pre_accb[p] = ta_; pre_val[p] = tv_;
	tp_ = 0; ta_ = 0; tv_ = 0
}

/* Proposer p (ballot b) has a majority of promises, the last from acceptor a: adopt the
 * value with the highest accepted ballot, apply the change, send Accept, accept locally. */
inline on_promise_majority(p, a, b) {
	if
	:: accb[a] > bestb[p] -> nv_ = val[a]
	:: else -> nv_ = bestv[p]
	fi;
	change(p, nv_, nv_, out_);
	outc[p] = out_;
	printf("node %d ballot (%d,%d): promise majority (last from %d), new value [dead %d used %d aseq %d sseq %d], outcome %d\n",
		p, BROUND(b), p, a, DEAD(nv_), USED(nv_), ASEQ(nv_), SSEQ(nv_), out_);
#ifdef BUG_EVAL_BEFORE_COMMIT
	if
	:: out_ == O_EVAL -> evaluate(ASEQ(nv_))
	:: else -> skip
	fi;
#endif
	assert(!(acc_sent & BIT(b)) || accval[b] == nv_); /* a ballot carries one value */
	acc_sent = acc_sent | BIT(b);
	accval[b] = nv_;
	if
	:: b >= prom[p] -> own_accept(p, b); ph[p] = ACCEPT
	:: else -> ph[p] = WAITING /* own acceptor refused: back off */
	fi;
	nv_ = 0;
	out_ = 0
}

/* Proposer p learns that its ballot is committed and acts on the outcome. */
inline on_commit(p, b) {
	durable(p);
	committed(b, accval[b]);
#ifdef LEADER
	/* Its own acceptor and the other one accepted b, and so promised b + 2 with accval[b]
	 * as their newest value: phase 1 of ballot b + 2, done. */
	if
	:: BROUND(b) < MAXR -> held[p] = b + 2; heldv[p] = accval[b]
	:: else -> held[p] = 0; heldv[p] = 0
	fi;
#endif
#ifndef BUG_EVAL_BEFORE_COMMIT
	if
	:: outc[p] == O_EVAL -> evaluate(ASEQ(accval[b]))
	:: else -> skip
	fi;
#endif
	if
	:: outc[p] == O_AGAIN -> evaluate_again(ASEQ(accval[b]))
	:: else -> skip
	fi;
	if
	:: outc[p] == O_RESET ->
		assert(!(resets & BIT(tk[p]))); /* 3: a replayed reset never applies again */
		resets = resets | BIT(tk[p])
	:: else -> skip
	fi;
	ph[p] = IDLE;
	pb[p] = 0;
	op[p] = 0;
	tk[p] = 0;
	outc[p] = 0;
	bestb[p] = 0;
	bestv[p] = 0
}

/* ---- the transitions, one d_step each ---- */

/* Prepare(b) reaches acceptor a; its Promise reaches the proposer (D) or is lost (L).
 * A refusal changes nothing but the proposer's backoff, which a timeout also gives. */
#define PROMISE(a, b) \
	:: d_step { (prep_sent & BIT(b)) && a != BNODE(b) && ready[a] && b >= prom[a] \
	            && ph[BNODE(b)] == PREPARE && pb[BNODE(b)] == b -> \
		printf("node %d promises (%d,%d)\n", a, BROUND(b), BNODE(b)); \
		durable(a); prom[a] = b; on_promise_majority(BNODE(b), a, b) } \
	:: d_step { (prep_sent & BIT(b)) && a != BNODE(b) && ready[a] && b > prom[a] -> \
		printf("node %d promises (%d,%d), reply lost\n", a, BROUND(b), BNODE(b)); \
		durable(a); prom[a] = b }

/* Accept(b) reaches acceptor a; its Accepted reaches the proposer (D) or is lost (L). */
#define ACCEPTED(a, b) \
	:: d_step { (acc_sent & BIT(b)) && a != BNODE(b) && ready[a] && b >= prom[a] \
	            && ph[BNODE(b)] == ACCEPT && pb[BNODE(b)] == b -> \
		accept_at(a, b); on_commit(BNODE(b), b) } \
	:: d_step { (acc_sent & BIT(b)) && a != BNODE(b) && ready[a] && b >= prom[a] \
	            && accb[a] != b -> \
		accept_at(a, b) }

/* Accept(b) again (a duplicate, a resend) at acceptor a whose promise moved past b: it
 * answers "accepted" again, with no write, only if it took b itself since its
 * last start (Replica._acceptor, `_taken`); refused otherwise, which changes nothing. */
#define REPEAT(a, b) \
	:: d_step { (acc_sent & BIT(b)) && a != BNODE(b) && ready[a] && b < prom[a] \
	            && accb[a] == b && own[a] && ph[BNODE(b)] == ACCEPT && pb[BNODE(b)] == b -> \
		printf("node %d answers Accept (%d,%d) again\n", a, BROUND(b), BNODE(b)); \
		durable(a); on_commit(BNODE(b), b) }

#define DELIVER(b) PROMISE(0, b) PROMISE(1, b) PROMISE(2, b) \
	ACCEPTED(0, b) ACCEPTED(1, b) ACCEPTED(2, b) REPEAT(0, b) REPEAT(1, b) REPEAT(2, b)

/* An acceptor climbs toward a ballot out of its reach (Replica._reach, _climb): it
 * promises a lower round b of the same node, any time a Prepare or Accept of that node at
 * a higher round is on the wire (the one it climbs toward), and refuses that one. Or its
 * check refuses the value of an Accept of b: it promises b (Replica._acceptor). A refusal
 * changes nothing but the proposer's backoff, so no reply is modelled. */
#define SAME_NODE_ABOVE(b) ((BNODE(b) == 0 -> 21845 : 43690) & ~(BIT((b) + 1) - 1))
#ifdef BUG_CLIMB_ANSWERS
/* The mutant: the climb's answer counts as a Promise of the ballot the proposer asked for. */
#define CLIMB_ANSWER(a, b) \
	:: d_step { ready[a] && (b) > prom[a] && a != BNODE(b) && ph[BNODE(b)] == PREPARE \
	            && (SAME_NODE_ABOVE(b) & BIT(pb[BNODE(b)])) && (prep_sent & BIT(pb[BNODE(b)])) -> \
		printf("node %d climbs to (%d,%d), answers a promise\n", a, BROUND(b), BNODE(b)); \
		durable(a); prom[a] = b; lb_ = pb[BNODE(b)]; on_promise_majority(BNODE(b), a, lb_); \
		lb_ = 0 }
#else
#define CLIMB_ANSWER(a, b)
#endif
#define CLIMB(a, b) \
	:: d_step { ready[a] && (b) > prom[a] \
	            && (((prep_sent | acc_sent) & SAME_NODE_ABOVE(b)) || (acc_sent & BIT(b))) -> \
		printf("node %d promises (%d,%d), refusing\n", a, BROUND(b), BNODE(b)); \
		durable(a); prom[a] = b } \
	CLIMB_ANSWER(a, b)
#define CLIMBS(b) CLIMB(0, b) CLIMB(1, b) CLIMB(2, b)

/* Proposer p starts a round r (after queueing, a refusal or a timeout): a round above
 * every one it has used and its own acceptor's promise; its own acceptor promises. */
#define ROUND(p, r) \
	:: d_step { ph[p] != IDLE && ready[p] && r > BROUND(prom[p]) -> \
		printf("node %d prepares (%d,%d)\n", p, r, p); \
		held[p] = 0; heldv[p] = 0; durable(p); \
		pb[p] = 2 * r + p; prep_sent = prep_sent | BIT(2 * r + p); \
		prom[p] = 2 * r + p; bestb[p] = accb[p]; bestv[p] = val[p]; ph[p] = PREPARE }


/* LEADER: proposer p holds a majority's promise of ballot held[p] (from its last commit)
 * and sends its waiting change as an Accept at once, built on heldv[p]: one round trip.
 * (A change taken at another node and forwarded is the same step: the leader accepts it
 * only if it was built on heldv[p], else the asking node applies it again to heldv[p].) */
inline lead_accept(p, b, base) {
	change(p, base, nv_, out_);
	outc[p] = out_;
	printf("node %d leads: Accept (%d,%d) at once, new value [dead %d used %d aseq %d sseq %d], outcome %d\n",
		p, BROUND(b), p, DEAD(nv_), USED(nv_), ASEQ(nv_), SSEQ(nv_), out_);
	assert(!(acc_sent & BIT(b)) || accval[b] == nv_); /* a ballot carries one value */
	acc_sent = acc_sent | BIT(b);
	accval[b] = nv_;
	pb[p] = b;
	held[p] = 0;
	heldv[p] = 0;
	if
	:: b >= prom[p] -> own_accept(p, b); ph[p] = ACCEPT
	:: else -> ph[p] = WAITING /* own acceptor promised higher: back off */
	fi;
	nv_ = 0;
	out_ = 0
}

#ifdef LEADER
#define LEAD(p) \
	:: d_step { ph[p] == WAITING && ready[p] && held[p] != 0 -> \
		lb_ = held[p]; lv_ = heldv[p]; lead_accept(p, lb_, lv_); lb_ = 0; lv_ = 0 }
#else
#define LEAD(p)
#endif

#ifdef BUG_LEADER_NO_PROMISE
/* The mutant: a fresh ballot above its own promise, its own acceptor's value, no phase 1. */
#define LEAD_BAD(p, r) \
	:: d_step { ph[p] == WAITING && ready[p] && r > BROUND(prom[p]) -> \
		lead_accept(p, 2 * r + p, val[p]) }
#else
#define LEAD_BAD(p, r)
#endif

/* A client sends a request to node p: an evaluate request with a new B, or the owner's
 * signed reset for an attempt t that was evaluated (a wrong password sends nothing). */
#define RESET(p, t) \
	:: d_step { ph[p] == IDLE && ops_left > 0 && (issued & BIT(t)) -> \
		printf("client at node %d: the owner's reset for attempt %d\n", p, t); \
		ops_left--; op[p] = OP_RESET; tk[p] = t; ph[p] = WAITING }

/* ... or sends attempt t's B again (t was charged: a committed value names it). */
#define RESEND(p, t) \
	:: d_step { ph[p] == IDLE && ops_left > 0 && ASEQ(g_cv) >= t -> \
		printf("client at node %d: B of attempt %d again\n", p, t); \
		ops_left--; op[p] = OP_RESEND; tk[p] = t; ph[p] = WAITING }

#define CLIENT(p) \
	:: d_step { ph[p] == IDLE && ops_left > 0 -> printf("client at node %d: new B\n", p); \
		ops_left--; op[p] = OP_START; ph[p] = WAITING } \
	RESET(p, 1) RESET(p, 2) RESET(p, 3) RESET(p, 4) RESET(p, 5) RESET(p, 6) \
	RESEND(p, 1) RESEND(p, 2) RESEND(p, 3) \
	:: d_step { ph[p] != IDLE -> /* deadline: the request fails, nothing acted on */ \
		printf("node %d gives up its request\n", p); \
		ph[p] = IDLE; pb[p] = 0; op[p] = 0; tk[p] = 0; outc[p] = 0; bestb[p] = 0; bestv[p] = 0 }

/* Node cn crashes and restarts from the copy: its proposer's memory is gone (and its
 * request, if any); it answers nobody until it has caught up. */
inline restart() {
	printf("node %d crashes, restarts from a copy: promised (%d,%d) accepted (%d,%d)\n",
		cn, BROUND(snap_prom), BNODE(snap_prom), BROUND(snap_accb), BNODE(snap_accb));
	prom[cn] = snap_prom; accb[cn] = snap_accb; val[cn] = snap_val; own[cn] = false;
	snap_prom = 0; snap_accb = 0; snap_val = 0;
	if
	:: cn < 2 -> ph[cn] = IDLE; op[cn] = 0; tk[cn] = 0; outc[cn] = 0;
		bestb[cn] = 0; bestv[cn] = 0; pb[cn] = 0; held[cn] = 0; heldv[cn] = 0
	:: else -> skip
	fi;
#ifdef BUG_NO_CATCHUP
	cp = 3
#else
	ready[cn] = false;
	cp = 2
#endif
}

#ifndef ROLLBACK_SIMPLE
/* A backup copy of node n's disk is taken now; the crash comes at any later moment. */
#define CRASH(n) \
	:: d_step { cp == 0 -> printf("backup copy of node %d's disk\n", n); cp = 1; cn = n; \
		snap_prom = prom[n]; snap_accb = accb[n]; snap_val = val[n] }
#define CRASH_LATER :: d_step { cp == 1 -> restart() }
#else
/* Node n restarts from its current disk, or from the oldest copy (the registration). */
#define CRASH(n) \
	:: d_step { cp == 0 -> cn = n; snap_prom = prom[n]; snap_accb = accb[n]; \
		snap_val = val[n]; restart() } \
	:: d_step { cp == 0 -> cn = n; snap_prom = 0; snap_accb = 0; snap_val = LIVE0; \
		restart() }
#define CRASH_LATER
#endif

/* Proposer p crashes while its own acceptance is in flight: the write is lost, the disk
 * still matches the token, so p is back at once (intact, no catch-up), its proposer's
 * memory gone. Its record still promises the Accept's ballot (the write before reserved
 * it), so its next rounds are above it. */
#ifdef BUG_ACCEPT_UNRESERVED
#define LOST_RESERVATION(p) prom[p] = pre_accb[p];
#else
#define LOST_RESERVATION(p)
#endif
#define LOSE_OWN_WRITE(p) \
	:: d_step { wip[p] && cp == 0 -> \
		printf("node %d crashes before its own acceptance is written, back intact\n", p); \
		prom[p] = pre_prom[p]; accb[p] = pre_accb[p]; val[p] = pre_val[p]; own[p] = false; \
		LOST_RESERVATION(p) \
		ph[p] = IDLE; op[p] = 0; tk[p] = 0; outc[p] = 0; bestb[p] = 0; bestv[p] = 0; \
		pb[p] = 0; held[p] = 0; heldv[p] = 0; durable(p); cp = 3 }

/* Catch-up: peer j answers the SyncRequest with its record; the restarted node merges
 * (replica._merge) and is ready once _sync_complete holds: a quorum (2) of ready peers,
 * or every peer. With 3 nodes both mean "both peers answered". */
#define SYNC(j) \
	:: d_step { cp == 2 && j != cn && !(synced & BIT(j)) -> \
		printf("node %d catches up from node %d\n", cn, j); \
		synced = synced | BIT(j); \
		if \
		:: accb[j] > accb[cn] -> accb[cn] = accb[j]; val[cn] = val[j]; own[cn] = false \
		:: else -> skip \
		fi; \
		if \
		:: prom[j] > prom[cn] -> prom[cn] = prom[j] \
		:: else -> skip \
		fi; \
		if \
		:: accb[cn] > prom[cn] -> prom[cn] = accb[cn] \
		:: else -> skip \
		fi; \
		if \
		:: synced == (7 & ~BIT(cn)) -> ready[cn] = true; cp = 3; synced = 0 \
		:: else -> skip \
		fi }

init {
	d_step {
		ready[0] = true; ready[1] = true; ready[2] = true;
		val[0] = LIVE0; val[1] = LIVE0; val[2] = LIVE0
	}
end:
	do
	CLIENT(0)
	CLIENT(1)
	LEAD(0) LEAD(1)
	LEAD_BAD(0, 1) LEAD_BAD(1, 1) LEAD_BAD(0, 2) LEAD_BAD(1, 2)
	ROUND(0, 1) ROUND(1, 1) DELIVER(2) DELIVER(3)
	ROUND(0, 2) ROUND(1, 2) DELIVER(4) DELIVER(5)
	CLIMBS(2) CLIMBS(3) CLIMBS(4) CLIMBS(5)
#if MAXR >= 3
	ROUND(0, 3) ROUND(1, 3) DELIVER(6) DELIVER(7)
	CLIMBS(6) CLIMBS(7)
#endif
#if MAXR >= 4
	ROUND(0, 4) ROUND(1, 4) DELIVER(8) DELIVER(9)
	CLIMBS(8) CLIMBS(9)
#endif
#if MAXR >= 5
#error "MAXR is at most 4"
#endif
#ifndef NO_CRASH
	CRASH(0) CRASH(1) CRASH(2)
	CRASH_LATER
	LOSE_OWN_WRITE(0) LOSE_OWN_WRITE(1)
#endif
	SYNC(0) SYNC(1) SYNC(2)
	od
}
