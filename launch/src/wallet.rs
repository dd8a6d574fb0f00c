//! `launch wallet …`: a wallet's coldkey and hotkey files (see
//! [`sinter_mechanism::ledger::wallet`]).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::wallet::{read_key_file, wallet_dir, write_key_file};

use crate::ConfigFileError;
use crate::cli::{KeyArg, WalletArgs, WalletCommand};

/// The directory of the wallet `args` name.
pub(crate) fn dir(args: &WalletArgs) -> Result<PathBuf> {
    Ok(wallet_dir(args.dir.as_deref(), &args.name)?)
}

fn key_name(key: KeyArg) -> &'static str {
    match key {
        KeyArg::Coldkey => "coldkey",
        KeyArg::Hotkey => "hotkey",
    }
}

/// `launch wallet …`.
pub fn run(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::New(args) => {
            let dir = dir(&args)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for key in [KeyArg::Coldkey, KeyArg::Hotkey] {
                let (pair, phrase) = Keypair::generate();
                write_key_file(&dir.join(key_name(key)), &phrase, &pair)?;
                println!("{}: {}", key_name(key), pair.account().ss58());
                println!("  mnemonic (shown once; anyone holding it holds the key): {phrase}");
            }
            println!("saved in {} (files readable only by you)", dir.display());
            Ok(())
        }
        WalletCommand::Import { wallet, key } => {
            let dir = dir(&wallet)?;
            let mut phrase = String::new();
            std::io::stdin()
                .read_to_string(&mut phrase)
                .context("reading the mnemonic from stdin")?;
            let phrase = phrase.trim();
            let pair = Keypair::from_secret(phrase).map_err(|e| ConfigFileError(e.to_string()))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_key_file(&dir.join(key_name(key)), phrase, &pair)?;
            println!("{}: {}", key_name(key), pair.account().ss58());
            Ok(())
        }
        WalletCommand::Show(args) => {
            let dir = dir(&args)?;
            let mut found = false;
            for key in [KeyArg::Coldkey, KeyArg::Hotkey] {
                let path = dir.join(key_name(key));
                if path.exists() {
                    found = true;
                    println!(
                        "{}: {}",
                        key_name(key),
                        read_key_file(&path)?.account().ss58()
                    );
                }
            }
            if !found {
                bail!(
                    "no keys in {}: create them with `launch wallet new --name {}`",
                    dir.display(),
                    args.name
                );
            }
            Ok(())
        }
    }
}
