// The collective: an int16 (or, with --bits, int8 / int4) all-reduce across
// hosts through the XDP engine.
// The code lives in src/collective/ (docs/architecture.md maps its rooms);
// this file keeps the old import path.
//
// One round all-reduces a segment of up to `capacity` chunks (the chunks the
// attached program's maps were sized for); a longer vector takes several
// rounds. A round:
//   1. plan and scale: every member sends each chunk's smallest exponent to
//      the round's leader. The leader waits for the members the swarm calls
//      fit (alive, not down-ranked), or for the first --quorum of them, or
//      until the round's deadline, and decides the round's plan: the active
//      members (those whose exponents are here) and the shared scale (their
//      maximum, THC-style agreement before sending, so nothing saturates).
//      It sends both to every member (CONTROL/EXPS_MAX), naming the next
//      round's leader among the active ones.
//   2. reduce-scatter: chunk c is owned by the plan's active member
//      c % K (K active members). Each active member quantizes the chunks it
//      does not own and sends them to their owners with UDP GSO, owners
//      interleaved so that every owner's XDP program starts summing at once.
//      A passive member (down-ranked, late, or past the quorum) sends
//      nothing and owns nothing: it keeps computing and receives results.
//   3. the owner's XDP program sums the contributions of the active members;
//      on completion the owner adds its own chunk, requantizes (integer math:
//      bit-identical everywhere), stores the result in its own results map
//      and sends it to every member, whose XDP program writes it straight
//      into their results map. At the round's deadline (derived from recent
//      round times) an owner closes its open slots with the members present;
//      a result carries its contributor count, so a mean stays exact.
//   4. every member dequantizes the round's results from its results map.
// Loss: a member missing results retransmits its contributions (flagged); a
// retransmit to a completed slot makes the owner's XDP program raise a
// resend event and the owner sends the stored result again (SwitchML). A
// passive member asks the owner with a control packet (RESULT_REQ).
// The window: the program accepts rounds [base, base+1]. An event of round r
// proves every active peer finished round r-1, so the base moves to r then.
export { Communicator, type CommunicatorPorts } from "./collective/communicator.ts";
export {
  combineStats, DEFAULTS, RoundError, TUNING, zeroStats,
  type CollectiveStats, type CommunicatorOptions, type RoundReport,
} from "./collective/options.ts";
export { ErrorFeedback } from "./collective/feedback.ts";
