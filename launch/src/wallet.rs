//! `launch wallet …`: wallets in Bittensor's format (see
//! [`sinter_mechanism::ledger::wallet`]), and the coldkey's password (SINTER_COLDKEY_PASSWORD,
//! or a prompt in a terminal).

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result, bail};
use sinter_mechanism::ledger::LedgerError;
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_mechanism::ledger::wallet::{self, KeyRole, WalletPath};

use crate::ConfigFileError;
use crate::cli::{KeyArg, WalletArgs, WalletCommand};

/// The environment variable a coldkey's password may come from.
pub(crate) const PASSWORD_VAR: &str = "SINTER_COLDKEY_PASSWORD";

/// Where the wallet `args` names lives.
pub(crate) fn path(args: &WalletArgs) -> Result<WalletPath> {
    Ok(WalletPath::new(
        args.dir.as_deref(),
        &args.name,
        &args.hotkey,
    )?)
}

/// The coldkey's password: from SINTER_COLDKEY_PASSWORD, else asked in the terminal (twice
/// with `confirm`, for a new key).
pub(crate) fn coldkey_password(confirm: bool) -> Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!(ConfigFileError(format!(
            "the coldkey is encrypted: set {PASSWORD_VAR}, or run in a terminal to be asked"
        )));
    }
    let password = rpassword::prompt_password("coldkey password: ")?;
    if confirm && rpassword::prompt_password("again: ")? != password {
        bail!(ConfigFileError("the passwords differ".into()));
    }
    Ok(password)
}

/// The coldkey's password when one is given without asking (SINTER_COLDKEY_PASSWORD).
pub(crate) fn coldkey_password_if_set() -> Option<String> {
    std::env::var(PASSWORD_VAR).ok()
}

/// The key in a key file of any format; an encrypted one is opened with the coldkey's
/// password (SINTER_COLDKEY_PASSWORD, or asked).
pub(crate) fn read_key(file: &std::path::Path) -> Result<Keypair> {
    match wallet::read_key_file(file, None) {
        Err(LedgerError::Locked { .. }) => Ok(wallet::read_key_file(
            file,
            Some(&coldkey_password(false)?),
        )?),
        other => Ok(other?),
    }
}

fn role(key: KeyArg) -> KeyRole {
    match key {
        KeyArg::Coldkey => KeyRole::Coldkey,
        KeyArg::Hotkey => KeyRole::Hotkey,
    }
}

/// `launch wallet …`.
pub fn run(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::New(args) => {
            let path = path(&args)?;
            let password = coldkey_password(true)?;
            let made = wallet::create(&path, &password)?;
            for (name, (account, phrase)) in [("coldkey", made.coldkey), ("hotkey", made.hotkey)] {
                println!("{name}: {account}");
                println!("  mnemonic (shown once; anyone holding it holds the key): {phrase}");
            }
            println!(
                "saved in {} (Bittensor's format; files readable only by you)",
                path.dir().display()
            );
            Ok(())
        }
        WalletCommand::Import { wallet, key } => {
            let path = path(&wallet)?;
            let mut phrase = String::new();
            std::io::stdin()
                .read_to_string(&mut phrase)
                .context("reading the mnemonic from stdin")?;
            let phrase = phrase.trim();
            let (pair, _) =
                Keypair::from_phrase(phrase).map_err(|e| ConfigFileError(e.to_string()))?;
            let password = match key {
                KeyArg::Coldkey => Some(coldkey_password(true)?),
                KeyArg::Hotkey => None,
            };
            wallet::write_key(&path, role(key), &pair, Some(phrase), password.as_deref())?;
            println!("{}", pair.account());
            Ok(())
        }
        WalletCommand::Show {
            wallet,
            json,
            unlock,
        } => {
            let path = path(&wallet)?;
            let (coldkey, hotkey) = wallet::public_accounts(&path)?;
            if coldkey.is_none() && hotkey.is_none() {
                bail!(
                    "no keys in {}: create them with `launch wallet new --name {} --hotkey {}` (or point --wallet-path at the wallets)",
                    path.dir().display(),
                    path.name,
                    path.hotkey
                );
            }
            if unlock {
                let key = wallet::unlock_coldkey(&path, &coldkey_password(false)?)?;
                if Some(key.account()) != coldkey {
                    bail!(LedgerError::Wallet(format!(
                        "{}: the coldkey is not the account coldkeypub.txt names",
                        path.coldkey_file().display()
                    )));
                }
            }
            let show = |a: Option<AccountId>| a.map(|a| a.ss58());
            if json {
                let body = serde_json::json!({ "coldkey": show(coldkey), "hotkey": show(hotkey) });
                println!("{body}");
            } else {
                for (name, account) in [("coldkey", coldkey), ("hotkey", hotkey)] {
                    if let Some(account) = show(account) {
                        println!("{name}: {account}");
                    }
                }
                if unlock {
                    println!("the coldkey opens with this password");
                }
            }
            Ok(())
        }
        WalletCommand::Convert { wallet, from } => {
            let path = path(&wallet)?;
            let password = coldkey_password(true)?;
            let (coldkey, hotkey) = wallet::convert_legacy(&from, &path, &password)?;
            println!("coldkey: {coldkey}");
            println!("hotkey: {hotkey}");
            println!(
                "written in Bittensor's format under {} ({} is left as it was)",
                path.dir().display(),
                from.display()
            );
            Ok(())
        }
    }
}
