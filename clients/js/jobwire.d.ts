// Types of jobwire.js (docs/clients.md, docs/protocol.md).

export type JobStatus = "scheduled" | "queued" | "running" | "completed" | "failed" | "cancelled";

export interface Job {
  id: string;
  kind: string;
  params: Record<string, unknown>;
  owner: string;
  status: JobStatus;
  total_files: number;
  processed_files: number;
  failed_files: number;
  current_file: string | null;
  progress: number;
  message: string | null;
  error: string | null;
  attempt: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  expires_at: string | null;
  epoch: string;
  last_event_id: number;
  result: unknown;
  external: boolean;
  /** The queue it waits in (its kind's unless another was given). */
  queue: string;
  /** 0–9, higher first within its queue. */
  priority: number;
  /** When a scheduled job becomes runnable (delayed, or a retry after a backoff). */
  run_at?: string;
  /** Attempt timeout in milliseconds, when one was given. */
  timeout_ms?: number;
  /** The job's own retry policy, when one was given. */
  retry?: { max_attempts?: number; backoff?: { base: string; factor: number; max: string } };
  cancel_requested: boolean;
  /** The cron schedule and tick that made the job, if one did. */
  schedule?: { name: string; tick: string };
  /** Why a queued job waits (no worker serves its queue, or it is paused). */
  waiting?: string;
}

/** An event: `data` holds the publisher's payload plus the job's counters after it. */
export interface JobEvent {
  id: number;
  job_id: string;
  /** One of the built-in types, or any custom type: pass unknown ones through. */
  type: string;
  timestamp: string;
  data: Record<string, unknown> & {
    status: JobStatus;
    attempt: number;
    total_files: number;
    processed_files: number;
    failed_files: number;
    current_file: string | null;
    progress: number;
  };
}

export interface Cursor {
  epoch: string;
  id: number;
}

export interface Status {
  state: "connecting" | "connected" | "disconnected" | "stopped";
  transport: "websocket" | "sse";
  url?: string;
  reason?: string;
  /** Milliseconds until the next attempt (state "disconnected"). */
  retryIn?: number;
}

export interface WatchHandlers {
  /** The job's state: first for each job, and again with resync: true when a resume point was lost. */
  onState?(job: Job, info: { resync: boolean }): void;
  /** The next event of a job; its id is the previous one's plus one. */
  onEvent?(event: JobEvent): void;
  /** A reconnect resumed exactly after `id`. */
  onResumed?(jobId: string, id: number): void;
  /** Called with the new state after a resync. */
  onResync?(job: Job): void;
  onStatus?(status: Status): void;
  /**
   * The server ended the job's subscription (not_found — also when the job
   * was deleted, expired or its data was lost —, forbidden, …) and it was
   * dropped from the watch. A job's own `error` events come to onEvent.
   */
  onRefused?(jobId: string, refusal: { code: string; message: string }): void;
  /** The watch stopped for good (e.g. a fixed token expired). */
  onError?(error: JobwireError): void;
}

export interface ClientOptions {
  /** Base URL, e.g. "http://127.0.0.1:8080" (default: the page's origin). */
  url?: string;
  /** Several base URLs, tried in turn. */
  urls?: string[];
  token?: string;
  tokenProvider?: () => Promise<string>;
  transport?: "auto" | "websocket" | "sse";
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export class JobwireError extends Error {
  status: number;
  code: string;
}

export function tokenExpiry(token: string): number | null;

export class Watch {
  cursor(jobId: string): Cursor | null;
  add(jobId: string, cursor?: Cursor | null): void;
  remove(jobId: string): void;
  close(): void;
}

export class JobwireClient {
  constructor(options: ClientOptions);
  createJob(kind: string, params?: Record<string, unknown>): Promise<Job>;
  createExternalJob(kind: string, params?: Record<string, unknown>): Promise<Job>;
  job(id: string): Promise<Job>;
  /** Filters: `kind`, `queue`, and `finishedAfter` (a Date or RFC 3339: jobs that finished then or later). */
  listJobs(query?: {
    status?: JobStatus;
    kind?: string;
    queue?: string;
    finishedAfter?: Date | string;
    limit?: number;
    cursor?: string;
  }): Promise<{ jobs: Job[]; next_cursor: string | null }>;
  cancel(id: string): Promise<{ outcome: "cancelled" | "cancel_requested" | "already_finished"; job: Job }>;
  deleteJob(id: string): Promise<null>;
  history(id: string, query?: { since?: number; epoch?: string; limit?: number }): Promise<{ job_id: string; epoch: string; events: JobEvent[] }>;
  publish(
    id: string,
    events: { type: string; data?: Record<string, unknown>; attempt?: number; n?: number }[],
  ): Promise<{ ids: number[]; duplicates: number; cancel_requested: boolean }>;
  watch(jobIds: string | string[], handlers?: WatchHandlers): Watch;
  // Operations (scope `admin`).
  queues(): Promise<QueueRow[]>;
  throughput(): Promise<{ minute: string; started: number; finished: number }[]>;
  setQueuePaused(queue: string, paused: boolean): Promise<{ queue: string; paused: boolean }>;
  workers(): Promise<RegisteredWorker[]>;
  retry(id: string): Promise<Job>;
  schedules(): Promise<Schedule[]>;
  putSchedule(schedule: NewSchedule): Promise<Schedule>;
  deleteSchedule(name: string): Promise<null>;
  setSchedulePaused(name: string, paused: boolean): Promise<Schedule>;
}

export interface QueueRow {
  name: string;
  waiting: number;
  scheduled: number;
  running: number;
  /** Finished in the last whole minute, and the last 15. */
  finished_1m: number;
  finished_15m: number;
  failed_1h: number;
  limits: { concurrency?: number; rate?: { max: number; per: string } };
  oldest_waiting_age_ms: number | null;
  /** The live workers serving it. */
  workers: string[];
  paused: boolean;
}

export interface RegisteredWorker {
  name: string;
  host: string;
  pid: number;
  version: string;
  queues: string[];
  concurrency: number;
  /** The jobs it runs now. */
  running: string[];
  started_at: string;
  last_seen: string;
  lease_ms: number;
  /** Seen within its lease. */
  live: boolean;
}

export interface NewSchedule {
  name: string;
  /** 5 fields, 6 with seconds first, or @hourly and the like. */
  cron: string;
  tz?: string;
  kind: string;
  params?: Record<string, unknown>;
  queue?: string;
  priority?: number;
  missed?: "once" | "skip";
  paused?: boolean;
}

export interface Schedule extends Required<Omit<NewSchedule, "tz" | "queue">> {
  tz?: string;
  queue?: string;
  owner: string;
  next_fire: string;
  last_fire?: string;
  last_job?: string;
  created_at: string;
}
