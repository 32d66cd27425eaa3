// A block volume: the source volume on production, a target volume on DR.
// Issue 3 adds block devices and nbd:// volumes behind the same interface.

export interface Volume {
  readonly url: string;
  readonly sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  /** Everything written before the call is durable when it resolves. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface VolumeWrite {
  offset: number;
  data: Uint8Array;
}
