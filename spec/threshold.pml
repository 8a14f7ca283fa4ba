/*
 * backupvault: the threshold vault's per-node counter rules (docs/threshold.md), for spin.
 *
 * One entry, one window between two successes of its owner, N nodes (3 or 5), threshold
 * T = N/2 + 1, per-node limit L = 2. Nodes 0 .. H-1 are honest (H = N - C); the C hostile
 * nodes are not modelled as state: they evaluate, accept and claim anything, so an output on B
 * needs only T - C honest partials on B, and with C >= 1 any claim that a value was
 * committed is worthless. The attacker (one process) is the client, the relay, the
 * network and the hostile nodes together; at each step it picks a node i, an attempt a
 * and a blinded element B and makes one of these happen:
 *
 *   commit     C = 0 only: honest consensus commits one B per attempt number, and gives
 *              out at most L attempt numbers per window (AMAX below). Values accepted by
 *              a minority and never committed need no state: R1 ignores them.
 *   evaluate   a request asks node i for attempt a on B.
 *   reset      a reset of node i up to attempt a arrives WITHOUT the owner's signature
 *              (a peer's word, a replicated tombstone, a forged grant). The owner signs
 *              resets only after a success, which ends the window, so inside the window
 *              every reset the attacker can deliver is unsigned.
 *
 * The node's rules (hsm firmware, after integration):
 *   R1 it evaluates attempt a only for the B of the value it has itself durably accepted
 *      with a, and only once that value is committed. With C = 0 that is the one
 *      committed B of attempt a; with C >= 1 hostile acceptors and proposers can make any
 *      (a, B) look accepted and committed to it, so R1 then constrains nothing;
 *   R2 at most one B per attempt: a resent copy of the same (a, B) is answered again
 *      free, another B for an attempt it has answered is refused;
 *   R3 count = attempts answered since its last reset, at most L, charged before the
 *      partial leaves;
 *   R4 it resets only on a verified owner signature.
 *
 * Property (assert): the number of outputs (B with >= T - C honest partials) never
 * exceeds BOUND: L when C = 0, floor((N - C) * L / (T - C)) otherwise.
 *
 * With OWNER, the run also holds one success of the owner, which ends the first window:
 * the owner's blinded element is B = 1; once honest nodes have given T - C partials on it
 * for an attempt a, the owner signs reset(a) and the second window begins. The signed
 * reset is public (it also travels in the replicated value), so the attacker delivers it
 * to any node at any later time, again and again:
 *   R5 a node applies a signed reset only for an attempt above its last one (rst), and
 *      forgets its answers for attempts up to it, keeping those above.
 * With C = 0 consensus then gives out attempts up to a + L. Property: the outputs of the
 * whole run never exceed 2 * BOUND (one bound per window).
 *
 * Switches (spin -D...):
 *   N=3 | N=5           nodes (default 3; N=5 with C >= 1 is too large to check in minutes)
 *   C=0 .. T-1          hostile nodes (default 0)
 *   BUG_NO_OWN_CHECK    mutant: the node evaluates whatever (a, B) the request names
 *   BUG_TWO_B           mutant: the node answers a second B for an attempt it answered
 *   BUG_PEER_RESET      mutant: the node resets on a peer's (unsigned) word
 *   TIGHT               assert one output less than BOUND, to show BOUND is reached
 *   OWNER               one owner success and its signed reset (R5), see above
 *   BUG_RESET_REPLAY    mutant (with OWNER): the node applies a delivered reset again,
 *                       forgetting every answer (no "above the last" check)
 */

#ifndef C
#define C 0
#endif
#ifndef N
#define N 3
#endif
#define T (N / 2 + 1)
#ifndef L
#define L 2
#endif
#define H (N - C)
#ifdef OWNER
#define MAXA (2 * L + 1)
#define WINDOWS 2
#else
#define MAXA (L + 1)
#define WINDOWS 1
#endif
#if C < 0 || C >= T
#error "C is 0 .. T-1"
#endif

#if C == 0
#define BOUND L
#ifdef OWNER
#define AMAX (2 * L)
#else
#define AMAX L
#endif
#define COMMITTED(a, b) (chosen[a] == (b))
#else
#define BOUND (((N - C) * L) / (T - C))
#define AMAX MAXA
#define COMMITTED(a, b) true
#endif
#define NBV (WINDOWS * BOUND + 1)  /* enough blinded elements to exceed the bound */

#ifdef TIGHT
#define LIMIT (WINDOWS * BOUND - 1)
#else
#define LIMIT (WINDOWS * BOUND)
#endif

#define IDX(i, a) ((i) * (MAXA + 1) + (a))
#define GIDX(i, b) ((i) * (NBV + 1) + (b))

byte evb[H * (MAXA + 1)];  /* the B node i answered attempt a for; 0 none */
byte cnt[H];               /* attempts answered since the last reset (R3) */
byte rst[H];               /* attempt of the last reset */
#if C == 0
byte chosen[MAXA + 1];     /* the committed B of each attempt */
#endif
bool gave[H * (NBV + 1)];  /* node i has given a partial on B */
#ifdef OWNER
byte ra;                   /* the attempt of the owner's success; 0: first window */
#endif
byte hp[NBV + 1];          /* honest partials on B */
byte outputs;              /* B the attacker can finalize */

inline give(i, b) {
    if
    :: !gave[GIDX(i, b)] ->
        gave[GIDX(i, b)] = true;
        hp[b]++;
        if
        :: hp[b] == T - C -> outputs++
        :: else -> skip
        fi
    :: else -> skip
    fi;
    assert(outputs <= LIMIT);
    assert(cnt[i] <= L)
}

inline evaluate(i, a, b) {
    if
#ifdef BUG_NO_OWN_CHECK
    :: true ->
#else
    :: COMMITTED(a, b) ->  /* R1 */
#endif
        if
        :: evb[IDX(i, a)] == b -> give(i, b)  /* resent copy: no second charge */
        :: evb[IDX(i, a)] != 0 && evb[IDX(i, a)] != b ->
#ifdef BUG_TWO_B
            evb[IDX(i, a)] = b;
            give(i, b)
#else
            skip  /* R2: refused */
#endif
        :: evb[IDX(i, a)] == 0 && a > rst[i] && cnt[i] < L ->  /* R3 */
            evb[IDX(i, a)] = b;
            cnt[i]++;
            give(i, b)
        :: else -> skip  /* refused: limit reached or attempt before the reset */
        fi
    :: else -> skip
    fi
}

/* A reset without the owner's signature: refused (R4), or, in the mutant, applied: the
 * node forgets its answers for attempts up to a. */
inline unsigned_reset(i, a) {
#ifdef BUG_PEER_RESET
    if
    :: a > rst[i] ->
        rst[i] = a;
        cnt[i] = 0;
        j = a + 1;
        do
        :: j <= MAXA ->
            if
            :: evb[IDX(i, j)] != 0 -> cnt[i]++
            :: else -> skip
            fi;
            j++
        :: else -> break
        od
    :: else -> skip
    fi
#else
    skip
#endif
}

#ifdef OWNER
/* The owner's signed reset for attempt ra, delivered to node i (directly or through the
 * replicated value): R5, or in the mutant, applied again on every delivery. */
inline signed_reset(i) {
#ifdef BUG_RESET_REPLAY
    rst[i] = ra;
    cnt[i] = 0
#else
    if
    :: ra > rst[i] ->
        rst[i] = ra;
        cnt[i] = 0;
        j = ra + 1;
        do
        :: j <= MAXA ->
            if
            :: evb[IDX(i, j)] != 0 -> cnt[i]++
            :: else -> skip
            fi;
            j++
        :: else -> break
        od
    :: else -> skip
    fi
#endif
}

/* Some honest node answered the owner's B (1) for attempt a, and the owner has T - C
 * honest partials on it: the owner succeeds, signs reset(a). */
inline owner_success(a) {
    if
    :: ra == 0 && hp[1] >= T - C ->
        j = 0;
        do
        :: j < H ->
            if
            :: evb[IDX(j, a)] == 1 -> ra = a; break
            :: else -> j++
            fi
        :: else -> break
        od
    :: else -> skip
    fi
}
#endif

active proctype attacker() {
    byte i, a, b, j;
    do
    :: atomic {
        select(i : 0 .. H - 1);
        select(a : 1 .. AMAX);
        select(b : 1 .. NBV);
        if
#if C == 0
#ifdef OWNER
        /* consensus numbers at most L attempts per window */
        :: chosen[a] == 0 && (a <= L || (ra > 0 && a <= ra + L)) -> chosen[a] = b
#else
        :: chosen[a] == 0 -> chosen[a] = b
#endif
#endif
        :: true -> evaluate(i, a, b)
        :: true -> unsigned_reset(i, a)
#ifdef OWNER
        :: ra == 0 -> owner_success(a)
        :: ra > 0 -> signed_reset(i)
#endif
        fi;
        i = 0; a = 0; b = 0; j = 0  /* no stale locals in the state vector */
    }
    od
}
